# Labels compete for the shared layers: on Yeast (14 gene-function labels), measure how
# the per-label gradients conflict, then train with their gradients aggregated by UPGrad
# instead of summed, with the exact engine and with the cheap representation engine.
import torch
from torch import nn

import labelgrad as lg
from labelgrad.app.datasets import yeast

ds = yeast(seed=0)  # river's bundled copy, read with numpy
x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test


def make_model():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(103, 64), nn.ReLU())
    return trunk, nn.Linear(64, 14)


# 1. How much do the labels conflict? The Gramian G = J J^T of the 14 per-label
#    gradients on the trunk gives their cosines; aggregate_backward returns it.
trunk, head = make_model()
losses = lg.per_label_losses(
    head(trunk(x_train)), y_train, loss="bce"
)  # (14,), sums to BCE
result = lg.aggregate_backward(losses, shared=trunk, aggregator=lg.aggregators.Mean())
cos = lg.conflicts(result.gramian)
off_diagonal = cos[~torch.eye(14, dtype=torch.bool)]
conflicting = (off_diagonal < 0).float().mean()
print(f"label pairs with conflicting gradients at init: {conflicting:.0%}")
print(
    f"engine: {result.engine} ({lg.explain_engine(losses, shared=trunk).split(':')[0]})"
)


# 2. Train: plain sum of the label losses vs UPGrad (exact Gramian over the trunk) vs
#    UPGrad on the representation (Gramian of the per-label gradients at the features,
#    closed form with head=). Minibatches of 128, Adam, 8 epochs.
def fit(aggregator=None, engine="exact"):
    trunk, head = make_model()
    opt = torch.optim.Adam([*trunk.parameters(), *head.parameters()], lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        for batch in torch.randperm(len(x_train), generator=gen).split(128):
            features = trunk(x_train[batch])
            losses = lg.per_label_losses(head(features), y_train[batch], loss="bce")
            opt.zero_grad()
            if aggregator is None:
                losses.sum().backward()
            else:
                lg.aggregate_backward(
                    losses, shared=trunk, aggregator=aggregator, engine=engine,
                    features=features, head=head,
                )  # fmt: skip
            opt.step()
    with torch.no_grad():
        pred = head(trunk(x_test)) > 0
    truth = y_test.bool()
    tp, fp, fn = (pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())
    macro = (2 * tp / (2 * tp + fp + fn).clamp(min=1)).mean()
    return f"micro-F1 {micro:.3f}, macro-F1 {macro:.3f}"


print("sum of label losses           :", fit())
print("UPGrad, exact engine          :", fit(lg.aggregators.UPGrad(), "exact"))
print("UPGrad, representation engine :", fit(lg.aggregators.UPGrad(), "representation"))
