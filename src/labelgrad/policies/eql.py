"""Equalization loss v1 (Tan et al., CVPR 2020) for sigmoid classifiers, at the logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from labelgrad._validation import as_class_vector, as_nonnegative_scalar
from labelgrad.policies.policy import GradContext, Policy

__all__ = ["EQL", "eql"]


class EQL(Policy):
    """Zero the negative gradients of rare classes for foreground samples. Built by :func:`eql`.

    Buffer: ``rare`` (C,) bool, the classes whose frequency is below the threshold.
    """

    rare: Tensor

    def __init__(self, freq_threshold: float, frequencies: Tensor | Sequence[float]) -> None:
        super().__init__()
        self.freq_threshold = as_nonnegative_scalar(freq_threshold, "freq_threshold")
        # In the dtype given: 1e39 (float64) is inf in float32, 1e-50 is 0.
        freq = as_class_vector(frequencies, "frequencies", keep_dtype=True)
        self.register_buffer("rare", freq < self.freq_threshold)

    def extra_repr(self) -> str:
        rare = int(self.rare.sum())
        return f"freq_threshold={self.freq_threshold}, rare={rare}/{self.rare.numel()}"

    def expected_num_classes(self) -> int | None:
        return int(self.rare.numel())

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        t = ctx.require_targets(self)
        foreground = t.positive.any(dim=-1, keepdim=True)
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        if t.encoding == "soft":
            # The paper's weight 1 - E T (1 - y) with the soft value y (float multi-hot labels
            # give the same 0/1 weights as hard ones).
            rare = foreground & self.rare.to(grad.device)
            w = 1 - rare.to(grad.dtype) * (1 - t.values.to(grad.dtype))
            return torch.where(w == 0, zero, grad * w)
        drop = foreground & self.rare.to(grad.device) & ~t.positive
        # where(), not a product: an exact zero, even for an infinite entry (EQL ignores it).
        return torch.where(drop, zero, grad)


def eql(freq_threshold: float, frequencies: Tensor | Sequence[float]) -> EQL:
    """Equalization loss (Tan et al., "Equalization Loss for Long-Tailed Object Recognition", 2020).

    For sigmoid (binary cross-entropy) classifiers: the loss of entry (n, j) is weighted by
    w = 1 - E(n) T(f_j) (1 - y_nj), where E(n) = 1 for a foreground sample (one with at least one
    positive label; background samples, with none, keep the full loss), and T(f_j) = 1 for a rare
    class, whose frequency f_j is below ``freq_threshold``. Rare classes thus receive no
    discouraging gradient from the samples of other classes. Unknown entries count as negatives
    (as in a loss on ``y.clamp(min=0)``); chain after ``mask_unknown()`` to drop them instead.

    This policy *reweights* the gradient (weights 0 and 1): it is exactly the gradient of the
    reweighted loss, for any reduction. With soft (float) targets the weight is the same formula
    with the soft value y (a sample is foreground if some y >= 0.5): float multi-hot labels give
    the 0/1 weights of hard ones. The softmax variant of the paper (a random
    denominator mask) is not provided.

    Args:
        freq_threshold: lambda; classes with ``frequencies < freq_threshold`` are rare
            (the paper uses 1.76e-3 on LVIS, with image frequencies).
        frequencies: (C,) per-class frequencies, e.g. the fraction of training samples that carry
            the class (any non-negative statistic compared with ``freq_threshold``).

    Example:
        >>> import torch, labelgrad as lg
        >>> policy = lg.eql(0.05, frequencies=[0.5, 0.4, 0.01])  # class 2 is rare
        >>> z = torch.zeros(2, 3, requires_grad=True)
        >>> y = torch.tensor([[1, 0, 0], [0, 0, 0]])  # a foreground and a background sample
        >>> policy(z, y).sum().backward()
        >>> z.grad.tolist()
        [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    """
    return EQL(freq_threshold, frequencies)
