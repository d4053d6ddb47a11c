"""Cross-rank reduction of policy statistics (a no-op without an initialised process group)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum", "is_distributed"]


def is_distributed() -> bool:
    """True when a torch.distributed process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(*tensors: Tensor) -> list[Tensor]:
    """Sum ``tensors`` over all ranks in one collective; returns them unchanged on one rank.

    The tensors are packed into one flat float32 buffer so that a single all-reduce runs per
    backward pass, whatever the number of statistics.
    """
    if not is_distributed():
        return list(tensors)
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out: list[Tensor] = []
    offset = 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return out
