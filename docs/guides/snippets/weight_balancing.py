# Weight balancing (Alshammari et al., CVPR 2022) with labelgrad's public API, on
# digits cut to a long tail (imbalance factor 50, CIFAR-LT protocol), tested on a
# balanced held-out set. Stage 1: plain cross-entropy with weight decay. Stage 2:
# the trunk frozen, the head retrained with a class-balanced loss (a policy),
# per-row weight decay (RowRules) and per-class MaxNorm.
import copy

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
freq = torch.tensor(counts, dtype=torch.float32)


def balanced_accuracy(model):
    with torch.no_grad():
        pred = model(x_test).argmax(1)
    recall = [(pred[y_test == c] == c).float().mean() for c in range(C)]
    return torch.stack(recall).mean()


def train(model, opt, steps, policy=None, loss=F.cross_entropy):
    for _ in range(steps):
        logits = model(x)
        if policy is not None:
            logits = policy(logits, y)
        opt.zero_grad()
        loss(logits, y).backward()
        opt.step()


def stage1(weight_decay, loss=F.cross_entropy):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
    model = nn.Sequential(trunk, nn.Linear(64, C))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=weight_decay)
    train(model, opt, 200, loss=loss)
    return model


def stage2(trained, policy, weight_decay=0.5, radius_factor=0.75):
    model = copy.deepcopy(trained)  # stage 2 starts from the stage-1 model
    head = model[-1]
    radius = radius_factor * float(head.weight.detach().norm(dim=1).mean())
    # A separate optimizer for the head only: the trunk is frozen. RowRules gives
    # every row its weight decay (the same here; a (C,) vector may differ per class)
    # and projects each weight row back onto the ball of radius max_norm (MaxNorm).
    opt = lg.RowRules(
        torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0),
        rows=head,
        weight_decay=torch.full((C,), weight_decay),
        max_norm=radius,
    )
    train(model, opt, 100, policy=policy)
    return model


log_prior = (freq / freq.sum()).log()
beta = 0.999  # class-balanced weights (Cui et al. 2019), mean 1
cb = (1 - beta) / (1 - beta**freq)
cb = cb * C / cb.sum()
plain = stage1(0.5)
runs = {
    "cross-entropy, weight decay 0.01": stage1(0.01),
    "cross-entropy, weight decay 0.5 (stage 1)": plain,
    "logit-adjusted loss, weight decay 0.5": stage1(
        0.5, loss=lambda z, t: F.cross_entropy(z + log_prior, t)
    ),
    "weight balancing (class-balanced stage 2)": stage2(plain, lg.class_weights(cb)),
    "weight balancing, stage 2 logit_adjust": stage2(plain, lg.logit_adjust(freq)),
}
for name, model in runs.items():
    print(f"{name:42}: balanced acc {balanced_accuracy(model):.3f}")
