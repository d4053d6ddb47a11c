"""Asymmetric loss (Ridnik et al., ICCV 2021) as a surrogate gradient at the logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from labelgrad._validation import as_nonnegative_scalar
from labelgrad.policies._surrogate import (
    SurrogatePolicy,
    compute_dtype,
    passthrough_non_finite,
    sigmoid_scale,
)
from labelgrad.policies.policy import GradContext

__all__ = ["AsymmetricFocus", "asymmetric_focus"]


def asymmetric_grad(
    z: Tensor, y: Tensor, gamma_pos: float, gamma_neg: float, clip: float
) -> Tensor:
    """d/dz of the asymmetric loss of each entry, -y L+ - (1 - y) L- (see asymmetric_focus)."""
    p, one_minus_p = torch.sigmoid(z), torch.sigmoid(-z)
    # Positive part: d/dz [-(1-p)^g+ log p] = -(1-p)^g+ ((1-p) - g+ p log p).
    pos = -(one_minus_p**gamma_pos) * (one_minus_p - gamma_pos * p * F.logsigmoid(z))
    # Negative part on the shifted probability p_m = max(p - m, 0), 1 - p_m = min(1 - p + m, 1):
    # d/dz [-p_m^g- log(1 - p_m)] = p p_m^g- ((1-p)/(1-p_m) - g- (1-p) log(1-p_m)/p_m), and 0
    # where p <= m. Written so that every limit is finite: (1-p)/(1-p_m) -> 1 and
    # log(1-p_m)/p_m -> -1 where a factor underflows.
    p_m = (p - clip).clamp(min=0)
    q_m = (one_minus_p + clip).clamp(max=1)
    live, open_ = p_m > 0, q_m > 0
    one = torch.ones_like(p_m)
    ratio = torch.where(open_, one_minus_p / torch.where(open_, q_m, one), one)
    log_q = torch.where(open_, torch.log(torch.where(open_, q_m, one)), 0 * one)
    log_ratio = torch.where(live, log_q / torch.where(live, p_m, one), -one)
    neg = p * p_m**gamma_neg * (ratio - gamma_neg * one_minus_p * log_ratio)
    neg = torch.where(live, neg, 0 * one)
    return y * pos + (1 - y) * neg


class AsymmetricFocus(SurrogatePolicy):
    """The gradient of the asymmetric loss. Built by :func:`asymmetric_focus`."""

    per_entry_scale = True
    plain_loss = "F.binary_cross_entropy_with_logits"

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        clip: float = 0.05,
        *,
        check: bool | None = None,
    ) -> None:
        super().__init__(check)
        self.gamma_pos = as_nonnegative_scalar(gamma_pos, "gamma_pos")
        self.gamma_neg = as_nonnegative_scalar(gamma_neg, "gamma_neg")
        self.clip = as_nonnegative_scalar(clip, "clip")
        if self.clip >= 1:
            raise ValueError(f"clip must be in [0, 1), got {clip!r}")

    def extra_repr(self) -> str:
        return f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}"

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        t = ctx.require_targets(self)
        dt = compute_dtype(grad)
        g, z, y = grad.to(dt), ctx.require_logits(self).to(dt), t.values.to(dt)
        scale, code = sigmoid_scale(g, z, y)
        self.report(code)
        surrogate = asymmetric_grad(z, y, self.gamma_pos, self.gamma_neg, self.clip)
        return passthrough_non_finite(grad, scale * surrogate, per_row=False)


def asymmetric_focus(
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    *,
    check: bool | None = None,
) -> AsymmetricFocus:
    """Asymmetric loss, ASL (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", 2021).

    Replaces the gradient of the user's binary cross-entropy by the gradient of
    L = -y (1-p)^gamma_pos log p - (1-y) p_m^gamma_neg log(1 - p_m), with p = sigmoid(z) and the
    shifted probability p_m = max(p - clip, 0): easy negatives are focused away (gamma_neg), and
    negatives the model scores below ``clip`` get no gradient at all, which discards many
    mislabelled negatives, such as missing labels counted as negative. The focusing weights are
    differentiated (the paper's gradient; the official code's ``disable_torch_grad_focal_loss``
    option, and its 1e-8 clamp inside the logarithms, are not reproduced). Same scale as the
    incoming gradient, entry by entry (reduction, ``weight``/``pos_weight``, loss scaling, DDP).

    This policy *replaces* the gradient: put it first in a chain (after ``mask_unknown`` at
    most), under ``F.binary_cross_entropy_with_logits``. Unknown labels count as negatives, as in
    a loss on ``y.clamp(min=0)``; chain after ``mask_unknown()`` to ignore them instead. Soft
    labels are used as y in the formula above, in their own precision (float64 stays float64);
    for soft labels and nonzero gammas this is the paper's equation, not the authors' code, which
    focuses a soft entry with the mixed weight (1 - p_t)^(gamma_pos y + gamma_neg (1 - y)).

    The loss scale is read entry by entry, so the check can refuse only an incoming gradient
    whose sign differs from sigmoid(z) - y, or that is nonzero where sigmoid(z) = y (targets
    smoothed in the loss but not given to the policy, a temperature, a second loss term). A soft
    label exactly at sigmoid(z), where the incoming gradient vanishes, takes the scale that the
    other entries share (a "mean" or "sum" reduction); with per-entry weights it is refused.

    Args:
        gamma_pos: focusing exponent of positive entries. Default 0.
        gamma_neg: focusing exponent of negative entries. Default 4.
        clip: probability margin m in [0, 1) of negative entries (0 turns it off). Default 0.05.
        check: verify the incoming gradient against binary cross-entropy's (see above): None
            (default) at once on the CPU and at the next call on an accelerator, True at once
            everywhere, False never.

    Example:
        >>> import torch, torch.nn.functional as F, labelgrad as lg
        >>> z = torch.tensor([[2.0, -4.0, 1.0]], requires_grad=True)
        >>> y = torch.tensor([[1.0, 0.0, 0.0]])
        >>> out = lg.asymmetric_focus()(z, y)
        >>> F.binary_cross_entropy_with_logits(out, y, reduction="sum").backward()
        >>> [round(v, 4) for v in z.grad[0].tolist()]  # the easy negative gets nothing
        [-0.1192, 0.0, 0.4165]
    """
    return AsymmetricFocus(gamma_pos, gamma_neg, clip, check=check)
