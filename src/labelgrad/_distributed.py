"""Cross-rank reduction of policy statistics (a no-op without an initialised process group).

Two rules make labelgrad's statistics safe under DDP and FSDP:

- Every rank must issue the same collectives with the same sizes. A mismatch (one rank built a
  policy for 10 classes, another for 12) would otherwise hang or silently mix unrelated numbers,
  so :class:`CheckedReducer` first compares a fixed-size signature of the tensors across ranks
  (one small MAX all-reduce of ``[sig, -sig]``: equal iff max == min) and raises the same error on
  every rank.
- DDP and FSDP *average* gradients over ranks, so the gradient a rank sees at the logits is
  ``world_size`` times its share of the gradient that is applied. Norm thresholds and gradient
  statistics therefore divide by :func:`gradient_world_size` (see ``Policy._context``), which makes
  a W-rank run match one process on the concatenated batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "CheckedReducer",
    "all_reduce_sum",
    "check_same_signature",
    "gradient_world_size",
    "is_distributed",
    "reduction_signature",
]

_SIGNATURE_LEN = 4


def is_distributed() -> bool:
    """True when a torch.distributed process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gradient_world_size() -> int:
    """The number of ranks DDP/FSDP average gradients over (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def reduction_signature(tensors: Sequence[Tensor]) -> tuple[int, ...]:
    """A fixed-length summary of the shapes of ``tensors``: (count, numel, ndim sum, shape hash).

    It is computed from metadata only (no device synchronisation).
    """
    h = 17
    for t in tensors:
        for s in (t.dim(), *t.shape):
            h = (h * 1_000_003 + int(s)) % 2_147_483_647
    numel = sum(t.numel() for t in tensors)
    ndim = sum(t.dim() for t in tensors)
    return (len(tensors), numel, ndim, h)


def check_same_signature(signature: Sequence[int], what: str, device: torch.device) -> None:
    """Raise the same ValueError on every rank unless all ranks pass an equal ``signature``.

    Args:
        signature: ``_SIGNATURE_LEN`` integers (see :func:`reduction_signature`).
        what: a description of the statistics, for the error message.
        device: where the collective runs (a CUDA device under NCCL, CPU under gloo).
    """
    if not is_distributed():
        return
    if len(signature) != _SIGNATURE_LEN:
        raise ValueError(f"signature must have {_SIGNATURE_LEN} entries, got {len(signature)}")
    sig = torch.tensor(list(signature), dtype=torch.int64, device=device)
    both = torch.cat([sig, -sig])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    values = both.cpu().tolist()
    hi, lo = values[:_SIGNATURE_LEN], [-v for v in values[_SIGNATURE_LEN:]]
    if hi != lo:
        raise ValueError(
            f"cannot reduce {what} across ranks: the ranks hold tensors of different shapes "
            f"(this rank: {tuple(signature)}; min over ranks: {tuple(lo)}, max: {tuple(hi)}; "
            "signature = (tensors, elements, dims, shape hash)). Build the policy with the same "
            "num_classes on every rank and call it on logits of the same class count."
        )


def all_reduce_sum(*tensors: Tensor) -> list[Tensor]:
    """Sum ``tensors`` over all ranks in one collective; returns them unchanged on one rank.

    The tensors are packed into one flat float32 buffer so that a single all-reduce runs per
    backward pass, whatever the number of statistics. No shape check: use
    :class:`CheckedReducer` where ranks could disagree.
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


class CheckedReducer:
    """:func:`all_reduce_sum` that first verifies, once per signature, that ranks agree.

    The check reads its result back to the host, so it runs only when this reducer sees a
    signature (shapes and world size) it has not verified yet: for a policy built for a fixed
    ``num_classes`` that is once per process group. A signature that later changes on only some
    ranks cannot be detected without a per-step synchronisation and is not supported.

    Args:
        what: a description of the statistics, used in the error message.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._verified: tuple[int, ...] | None = None

    def sum(self, *tensors: Tensor) -> list[Tensor]:
        """Sum ``tensors`` over ranks (unchanged on one rank), checking shapes first."""
        if not is_distributed():
            return list(tensors)
        self._verify(tensors)
        return all_reduce_sum(*tensors)

    def any(self, mask: Tensor) -> Tensor:
        """The elementwise OR of a bool ``mask`` over ranks (unchanged on one rank)."""
        if not is_distributed():
            return mask
        self._verify((mask,))
        flat = mask.to(torch.int32)
        dist.all_reduce(flat, op=dist.ReduceOp.MAX)
        return flat.to(torch.bool)

    def _verify(self, tensors: Sequence[Tensor]) -> None:
        signature = reduction_signature(tensors)
        key = (*signature, dist.get_world_size())
        if key != self._verified:
            check_same_signature(signature, self.what, tensors[0].device)
            self._verified = key
