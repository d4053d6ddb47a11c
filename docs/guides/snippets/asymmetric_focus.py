# Missing labels: the 8x8 digits as a one-vs-all (sigmoid) problem in which half
# of the label entries are missing (-1), positives included; mean average
# precision on a held-out set.
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score
from torch import nn

import labelgrad as lg

digits = load_digits()
x_all = torch.tensor(digits.data, dtype=torch.float32) / 16
y_all = F.one_hot(torch.tensor(digits.target), 10)
perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x_all)))
train, test = perm[:1000], perm[1000:]
x, x_test, y_test = x_all[train], x_all[test], y_all[test]
y = y_all[train].clone()
g = torch.Generator().manual_seed(0)
y[torch.rand(y.shape, generator=g) < 0.5] = -1  # half of the entries are not annotated


def fit(policy=None, steps=150):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logits = model(x)
        if policy is not None:
            logits = policy(logits, y)
        # The usual shortcut: missing labels counted as negatives.
        loss = F.binary_cross_entropy_with_logits(logits, y.clamp(min=0).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = model(x_test).sigmoid().numpy()
    return average_precision_score(y_test.numpy(), scores, average="macro")


both = lg.chain(lg.mask_unknown(), lg.asymmetric_focus())
runs = {
    "BCE, missing = negative": fit(),
    "asymmetric_focus()": fit(lg.asymmetric_focus()),
    "mask_unknown()": fit(lg.mask_unknown()),
    "mask_unknown + asymmetric_focus": fit(both),
}
for name, m_ap in runs.items():
    print(f"{name:32}: mAP {m_ap:.3f}")
