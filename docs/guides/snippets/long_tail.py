# Long-tailed classification on real data: scikit-learn's 8x8 digits cut to a long tail
# (imbalance factor 50: 150 images of digit 0 down to 3 of digit 9, CIFAR-LT protocol),
# tested on a balanced held-out set. Every run trains the same MLP for the same steps.
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import labelgrad as lg

digits = load_digits()
x_all = torch.tensor(digits.data, dtype=torch.float32) / 16
y_all = torch.tensor(digits.target)
rng = np.random.default_rng(0)
C, IF, n_max = 10, 50.0, 150
counts = [max(1, int(n_max * (1 / IF) ** (c / (C - 1)))) for c in range(C)]
train_idx, test_idx = [], []
for c in range(C):
    idx = rng.permutation(np.flatnonzero(digits.target == c))
    test_idx += idx[:25].tolist()  # balanced test set: 25 per class
    train_idx += idx[25 : 25 + counts[c]].tolist()
x, y = x_all[train_idx], y_all[train_idx]
x_test, y_test = x_all[test_idx], y_all[test_idx]
print("training images per class:", counts)


def fit(policy=None, loss="ce", steps=150, lr_scale=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, C))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    if lr_scale is not None:  # per-class step sizes of the head rows, in update space
        opt = lg.RowRules(opt, rows=model[2], lr_scale=lr_scale)
    for _ in range(steps):
        logits = model(x)
        if policy is not None:
            logits = policy(logits, y)
        if loss == "ce":
            out = F.cross_entropy(logits, y, reduction="sum") / len(y)
        else:  # one-vs-all sigmoid, the setting EQLv2 was designed for
            out = F.binary_cross_entropy_with_logits(
                logits, F.one_hot(y, C).float(), reduction="sum"
            ) / len(y)
        opt.zero_grad()
        out.backward()
        opt.step()
    with torch.no_grad():
        pred = model(x_test).argmax(1)
    per_class = torch.stack([(pred[y_test == c] == c).float().mean() for c in range(C)])
    tail = per_class[7:].mean()
    return f"balanced acc {per_class.mean():.3f}, tail (digits 7-9) acc {tail:.3f}"


freq = torch.tensor(counts, dtype=torch.float32)
inv = freq.sum() / (C * freq)  # inverse class frequency, mean ~1
tail_steps = (freq.max() / freq).sqrt()  # Adam step-size multiplier per head row
runs = {
    "cross-entropy": fit(),
    "class_weights(1/freq)": fit(lg.class_weights(inv)),
    "deferred re-weighting (DRW)": fit(
        lg.schedule(lg.class_weights(inv), start_step=90)
    ),
    "sigmoid BCE": fit(loss="bce"),
    "sigmoid BCE + eqlv2": fit(lg.eqlv2(num_classes=C), loss="bce"),
    "RowRules(lr_scale=tail_steps)": fit(lr_scale=tail_steps),
    "class_weights + lr_scale": fit(lg.class_weights(inv), lr_scale=tail_steps),
}
for name, result in runs.items():
    print(f"{name:30}: {result}")
