# Multi-label training when some labels are unknown: Yeast (2,417 genes, 14 labels),
# with 60% of the training labels hidden (-1). Compare: unknowns treated as negatives,
# unknowns masked with lg.mask_unknown(), and the oracle that sees every label.
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg
from labelgrad.app.datasets import hide_labels, yeast

ds = yeast(seed=0)  # read from the copy river bundles: nothing is downloaded
x_train, x_test, y_test = ds.x_train, ds.x_test, ds.y_test
# Hide 60% of the training labels: -1 means "this label of this gene was never
# annotated".
y_partial = hide_labels(ds.y_train, 0.6, seed=1)
known = y_partial >= 0
print(
    f"{len(x_train)} training genes, {ds.num_classes} labels; "
    f"known: {known.float().mean():.0%}, "
    f"positive among known: {(y_partial == 1).sum() / known.sum():.0%}"
)


def fit(labels: torch.Tensor, policy: lg.Policy | None) -> float:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(103, 64), nn.ReLU(), nn.Linear(64, 14))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):  # full-batch epochs
        logits = model(x_train)
        if policy is not None:
            logits = policy(
                logits, labels
            )  # identity forward; masks dL/dlogits in backward
        # clamp: the loss needs 0/1 targets; the policy has already zeroed unknown
        # entries.
        loss = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model(x_test) > 0
    truth = y_test.bool()
    tp = (pred & truth).sum()
    return float(
        2 * tp / (pred.sum() + truth.sum())
    )  # micro-F1 on fully labelled test genes


print(f"micro-F1, unknown treated as negative: {fit(y_partial, None):.3f}")
print(f"micro-F1, lg.mask_unknown()          : {fit(y_partial, lg.mask_unknown()):.3f}")
print(f"micro-F1, oracle (every label known) : {fit(ds.y_train, None):.3f}")

# The masked gradient is exactly the gradient of the loss over the known labels alone.
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(103, 64), nn.ReLU(), nn.Linear(64, 14))
masked = F.binary_cross_entropy_with_logits(
    lg.mask_unknown()(model(x_train), y_partial),
    y_partial.clamp(min=0).float(),
    reduction="sum",
)
reference = F.binary_cross_entropy_with_logits(
    model(x_train),
    y_partial.clamp(min=0).float(),
    weight=(y_partial >= 0).float(),
    reduction="sum",
)
g1 = torch.autograd.grad(masked, list(model.parameters()))
g2 = torch.autograd.grad(reference, list(model.parameters()))
print(
    f"max |grad difference| vs the known-labels-only loss: "
    f"{max(float((a - b).abs().max()) for a, b in zip(g1, g2)):.1e}"
)
