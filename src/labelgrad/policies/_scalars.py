"""Cached 0-d constants for the backward pass.

A Python float in a tensor op is wrapped into a float64 tensor and converted to the operand's
dtype on every call (four extra operators on the CPU, each paying dispatch). The policies' few
constants (0, 1, their hyperparameters) are made once per (value, dtype, device) instead.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["scalar"]


@functools.lru_cache(maxsize=512)
def _cached(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.full((), value, dtype=dtype, device=device)


def scalar(value: float, like: Tensor) -> Tensor:
    """``value`` as a 0-d tensor of ``like``'s dtype and device (cached; never write to it)."""
    if torch.compiler.is_compiling():
        return torch.full((), value, dtype=like.dtype, device=like.device)
    return _cached(float(value), like.dtype, like.device)
