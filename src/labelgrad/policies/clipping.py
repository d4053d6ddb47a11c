"""Policies that cap the norm of groups of gradient entries."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad._distributed import CheckedReducer, is_distributed
from labelgrad._validation import as_nonnegative_scalar
from labelgrad.policies._scalars import cast, scalar
from labelgrad.policies.policy import GradContext, Policy

__all__ = ["ClipPerClass", "ClipPerSample", "clip_per_class", "clip_per_sample"]


def _clip(
    grad: Tensor,
    ctx: GradContext,
    max_norm: float,
    dims: tuple[int, ...],
    reducer: CheckedReducer | None = None,
) -> Tensor:
    # Accumulate in float64: the squares of float32 entries overflow from |g| ~ 1e19 and vanish
    # below ~1e-19 (fp16/bf16 sooner), an inf or 0 norm that would leave the group unclipped;
    # torch.linalg.vector_norm does not rescale (float32 gives inf from 1e19). float64 holds the
    # square of every float32 and the sum of up to 1e231 of them. MPS has no float64: float32
    # there. A sum of squares, not vector_norm(dtype=float64): the same bits here, a third faster
    # on the CPU and fewer operators.
    acc = torch.float64 if grad.device.type != "mps" else torch.float32
    acc = torch.promote_types(grad.dtype, acc)
    wide = cast(grad, acc)
    sq = torch.mul(wide, wide).sum(dim=dims, keepdim=True)
    if reducer is not None and is_distributed():
        # The group spans the ranks (a class over the global batch): sum its squared norm.
        (sq,) = reducer.sum(sq)
    # A cached 0-d constant, not torch.tensor(max_norm, device=...): that would be a pageable
    # host-to-device copy on every backward, which waits for the stream on CUDA.
    limit = scalar(max_norm, sq)
    if ctx.grad_scale is not None:
        limit = limit * ctx.grad_scale.to(acc)  # compare the unscaled norm with max_norm
    # sq + sq * 0 turns an inf sum (an inf entry) into NaN and leaves every other value as it
    # is; then fmin(limit / norm, 1) is 1 for a NaN norm (fmin ignores NaN), so a non-finite
    # group is left untouched and a GradScaler still sees the overflow; norm == 0 gives
    # limit / 0 = inf -> 1.
    norm = torch.addcmul(sq, sq, scalar(0.0, sq)).sqrt_()
    if grad.dtype == acc and grad.numel() and not (reducer is not None and is_distributed()):
        norm = _rescaled_norm(grad, dims, sq, norm)
    factor = torch.fmin(torch.div(limit, norm), scalar(1.0, sq))
    return grad * cast(factor, grad.dtype)


def _rescaled_norm(grad: Tensor, dims: tuple[int, ...], sq: Tensor, norm: Tensor) -> Tensor:
    """``norm``, recomputed by scaling where the squares of a finite group do not fit.

    A float64 gradient has no wider type: squares overflow above ~1.3e154 (a finite group would
    read as non-finite and stay unclipped) and lose bits below ~1e-154. There the norm is
    max|g| * ||g / max|g|||; elsewhere the sum of squares keeps its bits.
    """
    peak = grad.abs().amax(dim=dims, keepdim=True)  # NaN stays NaN: such a group stays untouched
    one = scalar(1.0, peak)
    scaled = torch.div(grad, torch.where(peak > scalar(0.0, peak), peak, one))
    rescaled = torch.mul(scaled, scaled).sum(dim=dims, keepdim=True).sqrt_().mul_(peak)
    unfit = torch.logical_or(sq == scalar(float("inf"), sq), sq < scalar(1e-280, sq))
    return torch.where(torch.logical_and(unfit, torch.isfinite(peak)), rescaled, norm)


class _NormClip(Policy):
    """Cap the L2 norm of groups of entries; subclasses choose the axes a group spans."""

    requires_targets = False
    group_dims: tuple[int, ...] = ()
    spans_batch = False  # a group includes every sample: under DDP, the global batch

    def __init__(self, max_norm: float) -> None:
        super().__init__()
        self.max_norm = as_nonnegative_scalar(max_norm, "max_norm", positive=True)
        self._reducer = (
            CheckedReducer(f"the per-group gradient norms of {type(self).__name__}")
            if self.spans_batch
            else None
        )

    def extra_repr(self) -> str:
        return f"max_norm={self.max_norm}"

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        return _clip(grad, ctx, self.max_norm, self.group_dims, self._reducer)


class ClipPerClass(_NormClip):
    """Cap the gradient norm of each class over the batch. Built by :func:`clip_per_class`."""

    group_dims = (0, 1)  # a class's group: every sample and position
    spans_batch = True


def clip_per_class(max_norm: float) -> ClipPerClass:
    """Scale the gradient entries of each class down to an L2 norm of at most ``max_norm``.

    For each class c, the vector of all entries (n, c, ...) of the batch is rescaled if its norm
    exceeds ``max_norm``; under an attached GradScaler the threshold applies to the unscaled
    gradient. Under torch.distributed the batch is the global batch: the per-class squared norms
    are summed over ranks in the backward pass (one all-reduce of C floats), so W ranks clip
    exactly as one process on the concatenated batch.

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(4, 2, requires_grad=True)
        >>> lg.clip_per_class(1.0)(z).sum().backward()   # each column has norm 2 -> 1
        >>> z.grad[:, 0].tolist()
        [0.5, 0.5, 0.5, 0.5]
    """
    return ClipPerClass(max_norm)


class ClipPerSample(_NormClip):
    """Cap the gradient norm of each sample. Built by :func:`clip_per_sample`."""

    group_dims = (1, 2)  # a sample's group: every position and class


def clip_per_sample(max_norm: float) -> ClipPerSample:
    """Scale the gradient entries of each sample down to an L2 norm of at most ``max_norm``.

    For each sample n, the vector of all its entries (every class and position) is rescaled if
    its norm exceeds ``max_norm``.

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(1, 4, requires_grad=True)
        >>> lg.clip_per_sample(1.0)(z).sum().backward()   # norm 2 -> 1
        >>> z.grad.tolist()
        [[0.5, 0.5, 0.5, 0.5]]
    """
    return ClipPerSample(max_norm)
