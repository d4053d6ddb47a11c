"""Logit adjustment (Menon et al., ICLR 2021) as a surrogate gradient at the logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from labelgrad._validation import as_class_vector, as_nonnegative_scalar
from labelgrad.policies._surrogate import compute_dtype, passthrough_non_finite, softmax_scale
from labelgrad.policies.base import GradContext, Policy

__all__ = ["LogitAdjust", "logit_adjust"]


class LogitAdjust(Policy):
    """The gradient of cross-entropy on z + tau log(prior). Built by :func:`logit_adjust`.

    Buffer: ``prior`` (C,) float32, as given (only its ratios matter).
    """

    reads_logits = True
    prior: Tensor

    def __init__(self, prior: Tensor | Sequence[float], tau: float = 1.0) -> None:
        super().__init__()
        p = as_class_vector(prior, "prior")
        if not bool((p > 0).all()):
            raise ValueError("prior must be positive for every class (a frequency or a count)")
        self.tau = as_nonnegative_scalar(tau, "tau")
        self.register_buffer("prior", p)

    def extra_repr(self) -> str:
        return f"num_classes={self.prior.numel()}, tau={self.tau}"

    def expected_num_classes(self) -> int | None:
        return int(self.prior.numel())

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        t = ctx.require_targets(self)
        dt = compute_dtype(grad)
        g, z, q = grad.to(dt), ctx.require_logits(self).to(dt), t.values.to(dt)
        scale = softmax_scale(g, z, q)
        shift = self.tau * torch.log(self.prior.to(device=z.device, dtype=dt))
        adjusted = torch.softmax(z + shift, dim=-1) * q.sum(-1, keepdim=True) - q
        return passthrough_non_finite(grad, scale * adjusted, per_row=True)


def logit_adjust(prior: Tensor | Sequence[float], tau: float = 1.0) -> LogitAdjust:
    """Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment", 2021).

    Replaces the gradient of the user's softmax cross-entropy by the gradient of cross-entropy on
    the adjusted logits z + tau log(prior), at the same scale (the reduction, per-sample weights,
    loss scaling and DDP averaging are read from the incoming gradient, row by row). With
    ``tau=1`` and the training label frequencies as ``prior`` this is also Balanced Softmax (Ren
    et al., 2020). Predictions stay the plain logits: the adjustment acts during training only,
    which is the "logit-adjusted loss" form of the method.

    This policy *replaces* the gradient: put it first in a chain (after ``mask_unknown`` or other
    per-sample weights at most), under ``F.cross_entropy`` with class-index (or one-hot/soft
    probability) targets; ignored samples (``ignore_index``) keep a zero gradient.

    Args:
        prior: (C,) positive class frequencies or counts (only their ratios matter).
        tau: the temperature of the adjustment. Default 1.

    Example:
        >>> import torch, torch.nn.functional as F, labelgrad as lg
        >>> z = torch.zeros(2, 3, requires_grad=True)
        >>> y = torch.tensor([0, 2])
        >>> F.cross_entropy(lg.logit_adjust([8.0, 1.0, 1.0])(z, y), y).backward()
        >>> [round(v, 3) for v in z.grad[0].tolist()]  # softmax(log prior) - onehot(0), / N
        [-0.1, 0.05, 0.05]
    """
    return LogitAdjust(prior, tau)
