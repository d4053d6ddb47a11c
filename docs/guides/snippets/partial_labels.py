# Multi-label training when some labels are unknown: Yeast (2,417 genes, 14 labels), with 60%
# of the training labels hidden (-1). Compare: unknowns treated as negatives, unknowns masked
# with lg.mask_unknown(), and the oracle that sees every label.
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg

# Yeast ships with river (`pip install 'labelgrad[data]'`); read it with numpy.
river = importlib.util.find_spec("river")  # locate the file without importing river
path = Path(river.origin).parent / "datasets" / "yeast.csv.gz"
with gzip.open(path, "rt") as fh:
    data = np.loadtxt(fh, delimiter=",", skiprows=1, dtype=np.float32)
x, y = torch.from_numpy(data[:, :103]), torch.from_numpy(data[:, 103:]).long()
perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
train, test = perm[:1700], perm[1700:]

# Hide 60% of the training labels: -1 means "this label of this gene was never annotated".
y_train = y[train].clone()
hidden = torch.rand(y_train.shape, generator=torch.Generator().manual_seed(1)) < 0.6
y_train[hidden] = -1
print(
    f"train labels known: {(y_train >= 0).float().mean():.0%}, positives among known: "
    f"{(y_train == 1).sum() / (y_train >= 0).sum():.0%}"
)


def fit(labels: torch.Tensor, policy: lg.Policy | None) -> float:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(103, 64), nn.ReLU(), nn.Linear(64, 14))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):  # full-batch epochs
        logits = model(x[train])
        if policy is not None:
            logits = policy(logits, labels)  # identity forward; masks dL/dlogits in backward
        # clamp: the loss needs 0/1 targets; the policy has already zeroed unknown entries.
        loss = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model(x[test]) > 0
    truth = y[test].bool()
    tp = (pred & truth).sum()
    return float(2 * tp / (pred.sum() + truth.sum()))  # micro-F1 on fully labelled test genes


print(f"micro-F1, unknown treated as negative: {fit(y_train, None):.3f}")
print(f"micro-F1, lg.mask_unknown()          : {fit(y_train, lg.mask_unknown()):.3f}")
print(f"micro-F1, oracle (every label known) : {fit(y[train], None):.3f}")

# The masked gradient is exactly the gradient of the loss over the known labels alone.
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(103, 64), nn.ReLU(), nn.Linear(64, 14))
masked = F.binary_cross_entropy_with_logits(
    lg.mask_unknown()(model(x[train]), y_train), y_train.clamp(min=0).float(), reduction="sum"
)
reference = F.binary_cross_entropy_with_logits(
    model(x[train]), y_train.clamp(min=0).float(), weight=(y_train >= 0).float(), reduction="sum"
)
g1 = torch.autograd.grad(masked, list(model.parameters()))
g2 = torch.autograd.grad(reference, list(model.parameters()))
print(
    f"max |grad difference| vs the known-labels-only loss: "
    f"{max(float((a - b).abs().max()) for a, b in zip(g1, g2)):.1e}"
)
