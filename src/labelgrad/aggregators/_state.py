"""Helpers for aggregators whose state is shaped by K: buffers resized on load and on K change."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["resize_buffers_for_load"]


def resize_buffers_for_load(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, names: Iterable[str]
) -> None:
    """Give each named buffer the saved one's shape and dtype before ``load_state_dict`` copies it.

    The state's shape depends on K (and P), which a fresh module does not know yet.

    Example:
        >>> import torch
        >>> m = torch.nn.Module()
        >>> m.register_buffer("ema", torch.zeros(0))
        >>> resize_buffers_for_load(m, {"ema": torch.ones(3)}, "", ["ema"])
        >>> m.ema.shape
        torch.Size([3])
    """
    for name in names:
        saved = state_dict.get(prefix + name)
        current = getattr(module, name)
        if isinstance(saved, Tensor) and isinstance(current, Tensor):
            setattr(module, name, torch.zeros_like(saved, device=current.device))
