"""Label-dependent gradient scaling, done right.

The common recipe scales the head's gradient rows after backward, ``fc.weight.grad *= w[:, None]``.
Two things go wrong: the trunk never sees the scaling (it still learns from every label at full
strength), and Adam divides each row's update by that row's gradient scale, so a constant factor
on a row's gradient does not change its step at all. labelgrad scales dL/dlogits per class, which
is exactly the gradient of the class-weighted loss for every parameter. (To give a class a larger
or smaller *step* under Adam, use ``lg.RowRules(..., lr_scale=...)``, which acts in update space.)

Run: python examples/label_dependent_scaling.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5))
    x, y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    w = torch.tensor([1.0, 1.0, 1.0, 5.0, 0.1])  # up-weight class 3, down-weight class 4

    # labelgrad: one policy at the logits; every parameter gets the weighted loss's gradient.
    logits = lg.class_weights(w)(model(x), y)
    grads = torch.autograd.grad(
        F.cross_entropy(logits, y, reduction="sum"), list(model.parameters())
    )
    ref = torch.autograd.grad(
        F.cross_entropy(model(x), y, weight=w, reduction="sum"), list(model.parameters())
    )
    worst = max((a - b).abs().max().item() for a, b in zip(grads, ref))
    print(f"labelgrad vs CrossEntropyLoss(weight=w): max |difference| = {worst:.2e}")

    # The naive row scaling under Adam: the first step of row c is -lr * sign(g) whatever the
    # scale, because Adam normalises each coordinate by its own gradient magnitude.
    steps = []
    for scale_rows in (False, True):
        torch.manual_seed(0)
        m = nn.Linear(20, 5)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        before = m.weight.detach().clone()
        F.cross_entropy(m(x), y).backward()
        if scale_rows:
            m.weight.grad *= w[:, None]
        opt.step()
        steps.append((m.weight.detach() - before).norm(dim=1))
    print("Adam step per row, plain            :", [round(v, 4) for v in steps[0].tolist()])
    print("Adam step per row, grad *= w[:,None]:", [round(v, 4) for v in steps[1].tolist()])
    same = torch.allclose(*steps, atol=1e-5)  # up to Adam's eps
    print("same steps: Adam cancels a constant gradient scale ->", same)


if __name__ == "__main__":
    main()
