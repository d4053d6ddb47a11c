"""Logit adjustment (Menon et al., ICLR 2021) as a surrogate gradient at the logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from labelgrad._validation import as_class_vector, as_nonnegative_scalar
from labelgrad.policies._surrogate import (
    SurrogatePolicy,
    as_smoothing,
    compute_dtype,
    passthrough_non_finite,
    smoothed,
    softmax_scale,
)
from labelgrad.policies.policy import GradContext

__all__ = ["LogitAdjust", "logit_adjust"]


class LogitAdjust(SurrogatePolicy):
    """The gradient of cross-entropy on z + tau log(prior). Built by :func:`logit_adjust`.

    Buffer: ``prior`` (C,), as given, in its floating dtype (a float64 prior stays float64;
    integers and sequences take torch's default dtype). Only its ratios matter.
    """

    prior: Tensor

    def __init__(
        self,
        prior: Tensor | Sequence[float],
        tau: float = 1.0,
        *,
        label_smoothing: float = 0.0,
        check: bool | None = None,
    ) -> None:
        super().__init__(check)
        p = as_class_vector(prior, "prior", keep_dtype=True)
        if not bool((p > 0).all()):
            raise ValueError("prior must be positive for every class (a frequency or a count)")
        self.tau = as_nonnegative_scalar(tau, "tau")
        self.label_smoothing = as_smoothing(label_smoothing)
        self.register_buffer("prior", p)

    def extra_repr(self) -> str:
        extra = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"num_classes={self.prior.numel()}, tau={self.tau}{extra}"

    def expected_num_classes(self) -> int | None:
        return int(self.prior.numel())

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        t = ctx.require_targets(self)
        dt = compute_dtype(grad)
        g, z = grad.to(dt), ctx.require_logits(self).to(dt)
        q = smoothed(t.values.to(dt), self.label_smoothing)
        scale, code = softmax_scale(g, z, q, grad.dtype)
        self.report(code)
        # The logarithm in the prior's own precision: a float64 prior of 1e-50 is 0 in float32.
        prior = self.prior.to(z.device)
        shift = (self.tau * torch.log(prior.to(torch.promote_types(prior.dtype, dt)))).to(dt)
        adjusted = torch.softmax(z + shift, dim=-1) * q.sum(-1, keepdim=True) - q
        return passthrough_non_finite(grad, scale * adjusted, per_row=True)


def logit_adjust(
    prior: Tensor | Sequence[float],
    tau: float = 1.0,
    *,
    label_smoothing: float = 0.0,
    check: bool | None = None,
) -> LogitAdjust:
    """Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment", 2021).

    Replaces the gradient of the user's softmax cross-entropy by the gradient of cross-entropy on
    the adjusted logits z + tau log(prior), at the same scale (the reduction, per-sample weights,
    loss scaling and DDP averaging are read from the incoming gradient, row by row). With
    ``tau=1`` and the training label frequencies as ``prior`` this is also Balanced Softmax (Ren
    et al., 2020). Predictions stay the plain logits: the adjustment acts during training only,
    which is the "logit-adjusted loss" form of the method.

    This policy *replaces* the gradient: put it first in a chain (after ``mask_unknown`` or other
    per-sample weights at most), under ``F.cross_entropy`` with class-index (or one-hot/soft
    probability) targets; ignored samples (``ignore_index``) keep a zero gradient. With soft
    targets this is the gradient of ``F.cross_entropy(z + tau log(prior), q)``. Under
    ``F.cross_entropy(..., label_smoothing=eps)`` pass ``label_smoothing=eps`` here too: the
    result is then the gradient of the label-smoothed logit-adjusted loss. Any other loss
    (``weight=`` with soft targets, a temperature, a second loss term) is refused with a
    ValueError (see ``check``).

    Args:
        prior: (C,) positive class frequencies or counts (only their ratios matter); a tensor
            keeps its floating dtype.
        tau: the temperature of the adjustment. Default 1.
        label_smoothing: the ``label_smoothing`` of the user's ``F.cross_entropy``. Default 0.
        check: verify that the incoming gradient is that of the plain (or label-smoothed)
            cross-entropy: None (default) at once on the CPU and at the next call on an
            accelerator (no synchronisation), True at once everywhere, False never.

    Example:
        >>> import torch, torch.nn.functional as F, labelgrad as lg
        >>> z = torch.zeros(2, 3, requires_grad=True)
        >>> y = torch.tensor([0, 2])
        >>> F.cross_entropy(lg.logit_adjust([8.0, 1.0, 1.0])(z, y), y).backward()
        >>> [round(v, 3) for v in z.grad[0].tolist()]  # softmax(log prior) - onehot(0), / N
        [-0.1, 0.05, 0.05]
    """
    return LogitAdjust(prior, tau, label_smoothing=label_smoothing, check=check)
