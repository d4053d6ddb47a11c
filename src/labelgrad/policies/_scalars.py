"""Cached 0-d constants and cheap casts for the backward pass.

A Python float in a tensor op is wrapped into a float64 tensor and converted to the operand's
dtype on every call (four extra operators on the CPU, each paying dispatch). The policies' few
constants (0, 1, their hyperparameters) are made once per (value, dtype, device) instead. A
``.to(dtype)`` dispatches four operators (to, _to_copy, empty_strided, copy_); :func:`cast`
takes two.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["cast", "scalar"]


@functools.lru_cache(maxsize=512)
def _cached(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.full((), value, dtype=dtype, device=device)


def scalar(value: float, like: Tensor) -> Tensor:
    """``value`` as a 0-d tensor of ``like``'s dtype and device (cached; never write to it)."""
    if torch.compiler.is_compiling():
        return torch.full((), value, dtype=like.dtype, device=like.device)
    return _cached(float(value), like.dtype, like.device)


def cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` converted to ``dtype`` as a new contiguous tensor (``x`` itself if it has it).

    Example:
        >>> cast(torch.ones(2), torch.float64).dtype
        torch.float64
    """
    if x.dtype == dtype:
        return x
    if torch.compiler.is_compiling() or (_level is not None and _level() is not None):
        return x.to(dtype)  # a fresh tensor cannot take a batched (vmap) value in place
    return torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x)


# Private torch API, looked up once: the torch.func transform level (None outside one).
_level = getattr(torch._C._functorch, "maybe_current_level", None)
