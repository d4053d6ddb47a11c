"""Seesaw loss (Wang et al., CVPR 2021) as a surrogate gradient at the logits."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad._validation import as_count, as_nonnegative_scalar
from labelgrad.policies._surrogate import (
    NOT_HARD,
    SurrogatePolicy,
    as_smoothing,
    compute_dtype,
    passthrough_non_finite,
    smoothed,
    softmax_scale,
)
from labelgrad.policies.policy import GradContext
from labelgrad.policies.stateful import StatefulPolicy

__all__ = ["Seesaw", "seesaw"]


class Seesaw(StatefulPolicy, SurrogatePolicy):
    """The gradient of Seesaw cross-entropy. Built by :func:`seesaw`.

    Buffer (float32, saved in ``state_dict``, summed over ranks): ``cum_samples`` (C,), the number
    of labelled samples of each class seen so far, the current batch included.
    """

    cum_samples: Tensor

    def __init__(
        self,
        num_classes: int,
        p: float = 0.8,
        q: float = 2.0,
        *,
        eps: float = 1e-2,
        label_smoothing: float = 0.0,
        check: bool | None = None,
    ) -> None:
        super().__init__()
        self.set_check(check)
        self.num_classes = as_count(num_classes, "num_classes")
        self.p = as_nonnegative_scalar(p, "p")
        self.q = as_nonnegative_scalar(q, "q")
        self.eps = as_nonnegative_scalar(eps, "eps", positive=True)
        self.label_smoothing = as_smoothing(label_smoothing)
        self.add_state("cum_samples", torch.zeros(num_classes, dtype=torch.float32))

    def extra_repr(self) -> str:
        extra = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"num_classes={self.num_classes}, p={self.p}, q={self.q}, eps={self.eps}{extra}"

    def expected_num_classes(self) -> int | None:
        return self.num_classes

    def _counts(self, grad: Tensor, onehot: Tensor, update: bool) -> Tensor:
        if not update:
            return self.cum_samples
        inc = onehot.float().sum(dim=(0, 1))
        bad = (~torch.isfinite(grad).all()).float().reshape(1)
        inc, bad = self.reduce_increments(inc, bad)
        # A batch that overflowed on any rank (GradScaler will skip it) is not counted.
        self.cum_samples.add_(torch.where(bad == 0, inc, 0.0))
        return self.cum_samples

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        t = ctx.require_targets(self)
        dt = compute_dtype(grad)
        g, z, y = grad.to(dt), ctx.require_logits(self).to(dt), t.values.to(dt)
        target = smoothed(y, self.label_smoothing)
        scale, code = softmax_scale(g, z, target, grad.dtype)
        if t.encoding == "soft":
            # The factors compare the label's class with the others: one-hot float labels only.
            hard = ((y == 0) | (y == 1)).all()
            code = torch.where(hard, code, torch.maximum(code, torch.full_like(code, NOT_HARD)))
        self.report(code)
        counts = self._counts(grad, t.values, ctx.update_state).to(device=z.device, dtype=dt)
        negative = y == 0
        log_w = torch.zeros_like(z)
        if self.p > 0:
            # Mitigation: (n_j / n_i)^p where class j has fewer samples than the label i.
            log_n = torch.log(counts.clamp(min=1))
            own = (y * log_n).sum(-1, keepdim=True)
            log_w = log_w + self.p * (log_n - own).clamp(max=0)
        if self.q > 0:
            # Compensation: (s_j / s_i)^q where class j scores higher than the label i.
            log_s = torch.log_softmax(z, dim=-1)
            own_s = (y * log_s.exp()).sum(-1, keepdim=True).clamp(min=self.eps)
            log_w = log_w + self.q * (log_s - torch.log(own_s)).clamp(min=0)
        adjusted = z + torch.where(negative, log_w, torch.zeros_like(log_w))
        surrogate = torch.softmax(adjusted, dim=-1) * target.sum(-1, keepdim=True) - target
        return passthrough_non_finite(grad, scale * surrogate, per_row=True)


def seesaw(
    num_classes: int,
    p: float = 0.8,
    q: float = 2.0,
    *,
    eps: float = 1e-2,
    label_smoothing: float = 0.0,
    check: bool | None = None,
) -> Seesaw:
    """Seesaw loss (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021).

    Replaces the gradient of the user's softmax cross-entropy by the gradient of Seesaw
    cross-entropy, as in mmdetection's ``seesaw_ce_loss``: for a sample of class i the logit of
    every other class j is raised by log(M_ij C_ij), where the mitigation factor
    M_ij = (n_j / n_i)^p if n_j < n_i (else 1) shrinks the penalty that frequent classes put on
    rare ones, and the compensation factor C_ij = (s_j / max(s_i, eps))^q if s_j > s_i (else 1)
    restores it for a rare class j that the model over-predicts (s = softmax(z), detached).
    n counts the labelled samples per class seen so far, the current batch included, summed over
    ranks under torch.distributed. Same scale as the incoming gradient (reduction, per-sample
    weights, loss scaling, DDP). Only the classification branch: detection heads add their own
    objectness loss.

    This policy *replaces* the gradient: put it first in a chain (after ``mask_unknown`` at most),
    under ``F.cross_entropy``. Ignored samples keep a zero gradient and are not counted. Backward
    passes under :func:`labelgrad.no_state_update` use the counts as they are. Inside
    :func:`labelgrad.accumulation_window` each micro-batch sees the window's starting counts plus
    its own labels (the later micro-batches are not known yet); the window's total is committed
    at its end. With ``p=0, q=0`` this is plain cross-entropy: the incoming gradient, exactly.
    Soft targets other than one-hot float labels are refused (the factors are defined for class
    labels). Under
    ``F.cross_entropy(..., label_smoothing=eps)`` pass ``label_smoothing=eps`` too: the result is
    the gradient of Seesaw cross-entropy with the smoothed target (the factors still follow the
    label). Any other loss is refused with a ValueError (see ``check``).

    Args:
        num_classes: C.
        p: exponent of the mitigation factor (0 turns it off). Default 0.8.
        q: exponent of the compensation factor (0 turns it off). Default 2.
        eps: lower bound of the own-class score in the compensation factor. Default 0.01.
        label_smoothing: the ``label_smoothing`` of the user's ``F.cross_entropy``. Default 0.
        check: verify that the incoming gradient is that of the plain (or label-smoothed)
            cross-entropy: None (default) at once on the CPU and at the next call on an
            accelerator, True at once everywhere, False never.

    Example:
        >>> import torch, torch.nn.functional as F, labelgrad as lg
        >>> policy = lg.seesaw(num_classes=3)
        >>> z = torch.zeros(5, 3, requires_grad=True)
        >>> y = torch.tensor([0, 0, 0, 1, 1])
        >>> F.cross_entropy(policy(z, y), y, reduction="sum").backward()
        >>> policy.cum_samples.tolist()
        [3.0, 2.0, 0.0]
        >>> [round(v, 3) for v in z.grad[0].tolist()]  # rarer negatives are pushed down less
        [-0.532, 0.338, 0.194]
    """
    return Seesaw(num_classes, p, q, eps=eps, label_smoothing=label_smoothing, check=check)
