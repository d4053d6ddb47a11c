"""Policies that multiply entries of the gradient by per-class weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from labelgrad._validation import as_class_vector
from labelgrad.policies._scalars import scalar
from labelgrad.policies.linear import LinearPolicy, Multiplier, like
from labelgrad.policies.policy import GradContext

__all__ = ["ClassWeights", "PosNegWeights", "class_weights", "pos_neg_weights"]

Weights = Tensor | Sequence[float]


class ClassWeights(LinearPolicy):
    """Multiply the gradient by per-class weights. Built by :func:`class_weights`."""

    weight: Tensor

    def __init__(self, weight: Weights) -> None:
        super().__init__()
        self.register_buffer("weight", as_class_vector(weight, "weight", keep_dtype=True))

    def expected_num_classes(self) -> int | None:
        return int(self.weight.numel())

    def multiplier(self, grad: Tensor, ctx: GradContext) -> Multiplier:
        t = ctx.require_targets(self)
        w = like(self.weight, grad)
        if t.indices is None:
            return Multiplier(scale=w)
        # Class indices: the whole sample is weighted by the weight of its class, exactly as
        # CrossEntropyLoss(weight=w, reduction="sum"). Ignored samples are left as they are.
        w_sample = w[t.indices.unsqueeze(-1).clamp(0, w.numel() - 1)]  # (N, S, 1)
        return Multiplier(scale=torch.where(t.known[..., :1], w_sample, scalar(1.0, w)))


def class_weights(weight: Weights) -> ClassWeights:
    """Multiply the gradient at the logits by a weight per class.

    Multi-hot, partial and soft labels: entry (n, c) is multiplied by ``weight[c]``, the gradient
    of ``BCEWithLogitsLoss(weight=weight)``. Class indices: every entry of sample n is multiplied
    by ``weight[y_n]``, the gradient of ``CrossEntropyLoss(weight=weight, reduction="sum")``
    (for ``reduction="mean"`` PyTorch also divides by the summed weights of the batch; that
    normaliser is a per-batch constant, which labelgrad does not reintroduce).

    Args:
        weight: (C,) finite, non-negative weights.

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(2, 3, requires_grad=True)
        >>> lg.class_weights([1.0, 2.0, 0.5])(z, torch.tensor([1, 2])).sum().backward()
        >>> z.grad.tolist()
        [[2.0, 2.0, 2.0], [0.5, 0.5, 0.5]]
    """
    return ClassWeights(weight)


class PosNegWeights(LinearPolicy):
    """Separate multipliers for positive and negative entries. Built by :func:`pos_neg_weights`."""

    pos: Tensor
    neg: Tensor

    def __init__(self, pos: float | Weights = 1.0, neg: float | Weights = 1.0) -> None:
        super().__init__()
        p = as_class_vector(pos, "pos", allow_scalar=True, keep_dtype=True)
        n = as_class_vector(neg, "neg", allow_scalar=True, keep_dtype=True)
        if p.dim() == 1 and n.dim() == 1 and p.numel() != n.numel():
            raise ValueError(
                f"pos and neg must have the same length (C,), got {p.numel()} and {n.numel()}"
            )
        self.register_buffer("pos", p)
        self.register_buffer("neg", n)

    def expected_num_classes(self) -> int | None:
        for w in (self.pos, self.neg):
            if w.dim() == 1:
                return int(w.numel())
        return None

    def multiplier(self, grad: Tensor, ctx: GradContext) -> Multiplier:
        ctx.require_targets(self)
        return Multiplier(pos=like(self.pos, grad), neg=like(self.neg, grad))


def pos_neg_weights(pos: float | Weights = 1.0, neg: float | Weights = 1.0) -> PosNegWeights:
    """Multiply positive entries by ``pos[c]`` and negative entries by ``neg[c]``.

    Unknown entries are left as they are (combine with :func:`mask_unknown` to drop them).
    For soft labels an entry counts as positive when its probability is at least 0.5.

    Args:
        pos: a scalar or (C,) multipliers for positive labels.
        neg: a scalar or (C,) multipliers for negative labels.

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(1, 3, requires_grad=True)
        >>> lg.pos_neg_weights(pos=2.0, neg=0.5)(z, torch.tensor([[1, 0, -1]])).sum().backward()
        >>> z.grad.tolist()
        [[2.0, 0.5, 1.0]]
    """
    return PosNegWeights(pos, neg)
