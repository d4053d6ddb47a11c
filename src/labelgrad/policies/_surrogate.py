"""Shared by the surrogate-gradient policies: recover the loss's scale from the incoming gradient.

A surrogate policy replaces dL/dlogits by the gradient of another (published) loss. To give that
gradient the user's reduction ("mean" over the batch, "sum", per-sample weights, a GradScaler's
loss scale, DDP), it reads the factor between the incoming gradient and the gradient of the plain
loss it assumes the user wrote (cross-entropy or binary cross-entropy on the logits), per row or
per entry, and multiplies the published loss's gradient by the same factor.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["compute_dtype", "passthrough_non_finite", "sigmoid_scale", "softmax_scale"]


def compute_dtype(grad: Tensor) -> torch.dtype:
    """float64 for float64 gradients, float32 otherwise (half-precision gradients under AMP)."""
    return torch.float64 if grad.dtype == torch.float64 else torch.float32


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    # 0 where the denominator is 0: the incoming gradient is then 0 as well (an ignored sample, a
    # masked entry, or a prediction so confident that its gradient underflowed).
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def softmax_scale(grad: Tensor, logits: Tensor, q: Tensor) -> Tensor:
    """The (N, S, 1) factor s with grad = s (softmax(z) sum(q) - q), cross-entropy's gradient.

    For hard targets s is read from the entries whose target is 0, where both sides are computed
    to full relative precision (sum_c g_c / sum_c p_c sum(q)); rows with no such entry (soft
    targets everywhere positive) fall back to the least-squares fit <g, r> / <r, r>.
    """
    r = torch.softmax(logits, dim=-1) * q.sum(-1, keepdim=True) - q
    free = q == 0
    zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
    s_free = _ratio(torch.where(free, grad, zero).sum(-1), torch.where(free, r, zero).sum(-1))
    s_fit = _ratio((grad * r).sum(-1), (r * r).sum(-1))
    s = torch.where(free.any(-1), s_free, s_fit)
    return s.unsqueeze(-1)


def sigmoid_scale(grad: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """The (N, S, C) factor s with grad = s (sigmoid(z) - y), binary cross-entropy's gradient."""
    # The same expression as PyTorch's backward of BCEWithLogits, so that s is exact where it is
    # representable.
    return _ratio(grad, torch.sigmoid(logits) - y)


def passthrough_non_finite(grad: Tensor, out: Tensor, per_row: bool) -> Tensor:
    """``out`` in ``grad``'s dtype, except that non-finite incoming gradients pass through."""
    ok = torch.isfinite(grad)
    if per_row:
        ok = ok.all(-1, keepdim=True)
    return torch.where(ok, out.to(grad.dtype), grad)
