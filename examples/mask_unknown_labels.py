"""Masking the gradient of some labels, done right.

The common recipe edits the head's gradient after backward: ``model.fc.weight.grad *= labels``.
On a ``Linear(10, 5)`` head the weight gradient is (5, 10), so a 5-vector of labels broadcasts
along the wrong axis and raises; a (batch, 5) label tensor cannot express "label 3 of sample 7 is
unknown" on a (5, 10) gradient at all; and the trunk still receives the gradient of the unknown
labels. The right place is dL/dlogits, per sample and per class, during backward.

Run: python examples/mask_unknown_labels.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5))
    x = torch.randn(8, 20)
    labels = torch.randint(0, 2, (8, 5))
    labels[torch.rand(8, 5) < 0.4] = -1  # -1: this sample's label for this class is unknown

    # 1. The naive recipe does not even run: (5, 10) * (5,) broadcasts along the input axis.
    loss = F.binary_cross_entropy_with_logits(model(x), labels.clamp(min=0).float())
    loss.backward()
    head = model[2]
    try:
        head.weight.grad *= labels[0].float()
    except RuntimeError as err:
        print(f"naive param.grad *= labels fails: {err}")
    model.zero_grad()

    # 2. labelgrad: zero dL/dlogits where the label is unknown. Every parameter, trunk included,
    #    then receives exactly the gradient of the loss over the known labels.
    policy = lg.mask_unknown()
    logits = policy(model(x), labels)
    loss = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0).float(), reduction="sum")
    grads = torch.autograd.grad(loss, list(model.parameters()))

    known = (labels >= 0).float()
    reference = F.binary_cross_entropy_with_logits(
        model(x), labels.clamp(min=0).float(), weight=known, reduction="sum"
    )
    ref_grads = torch.autograd.grad(reference, list(model.parameters()))
    worst = max((a - b).abs().max().item() for a, b in zip(grads, ref_grads))
    print(f"labelgrad vs loss over known labels only: max |difference| = {worst:.2e}")
    trunk = grads[0].norm().item()
    print(
        f"the trunk's gradient is masked too (norm {trunk:.4f}); editing the head's .grad cannot do that"
    )


if __name__ == "__main__":
    main()
