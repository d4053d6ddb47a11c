# Surrogate-gradient policies on scikit-learn's 8x8 digits cut to a long tail
# (imbalance factor 50, CIFAR-LT protocol), tested on a balanced held-out set;
# the same MLP, steps and seed for every run.
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
    test_idx += idx[:25].tolist()
    train_idx += idx[25 : 25 + counts[c]].tolist()
x, y = x_all[train_idx], y_all[train_idx]
x_test, y_test = x_all[test_idx], y_all[test_idx]
prior = torch.tensor(counts, dtype=torch.float32)


def fit(policy=None, loss_fn=F.cross_entropy, steps=150):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, C))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        logits = model(x)
        if policy is not None:
            logits = policy(logits, y)
        opt.zero_grad()
        loss_fn(logits, y).backward()
        opt.step()
    with torch.no_grad():
        pred = model(x_test).argmax(1)  # plain logits at test time, for every run
    per_class = torch.stack([(pred[y_test == c] == c).float().mean() for c in range(C)])
    return per_class.mean().item(), model


def adjusted_loss(logits, y):  # the published logit-adjusted loss, written out
    return F.cross_entropy(logits + torch.log(prior / prior.sum()), y)


runs = {
    "cross-entropy": fit(),
    "logit_adjust(prior) policy": fit(lg.logit_adjust(prior)),
    "logit-adjusted loss (reference)": fit(loss_fn=adjusted_loss),
    "seesaw(C)": fit(lg.seesaw(C)),
    "class_weights(1/freq)": fit(lg.class_weights(prior.sum() / (C * prior))),
}
for name, (acc, _) in runs.items():
    print(f"{name:32}: balanced acc {acc:.3f}")
same = all(
    torch.allclose(p, q, atol=1e-5)
    for p, q in zip(
        runs["logit_adjust(prior) policy"][1].parameters(),
        runs["logit-adjusted loss (reference)"][1].parameters(),
    )
)
print("policy and loss train the same weights:", same)
