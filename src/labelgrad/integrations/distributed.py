"""Aggregation under DDP: weights from the Gramian of the global batch, the same on every rank.

Where each nonlinear rule runs relative to DDP's gradient all-reduce:

- Policies (level 1) run inside ``backward``, on each rank's logits, *before* the all-reduce.
  Their statistics and the per-class norms of ``clip_per_class`` are summed over ranks in the
  backward pass, and thresholds refer to the averaged gradient DDP applies, so every rank
  applies the same weights (``labelgrad._distributed``).
- Row rules (level 2) run in ``optimizer.step``, *after* the all-reduce (and after
  ``GradScaler.unscale_``); the present classes are the union over ranks, so every rank moves
  the same rows.
- Aggregation (level 3) must compute its weights *before* the all-reduce (the weighted backward
  is what DDP reduces), from a Gramian every rank agrees on: wrap the aggregator in
  :func:`synchronized`. With ``engine="representation"`` the per-label gradients at the features
  of different samples occupy different coordinates, so the global Gramian is exactly the sum
  of the ranks' Gramians: W ranks then equal one process on the concatenated batch. The
  parameter-space engines (``"exact"``, ``"subset"``, ``"sample_gramian"``) would need the
  cross-rank terms J_r J_s^T (an all-reduce of the K x P Jacobian); with :func:`synchronized`
  they use the sum of the ranks' Gramians (consistent on every rank, not exact), and
  ``"exact"`` writes the shared gradients directly, which DDP does not reduce: under DDP run it
  on ``ddp.module`` inside ``ddp.no_sync()`` and call :func:`all_reduce_gradients` afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from labelgrad._distributed import CheckedReducer, gradient_world_size, is_distributed
from labelgrad.aggregators.aggregator_types import GramianWeighting, WeightingWrapper

__all__ = ["SynchronizedGramian", "all_reduce_gradients", "synchronized"]


class SynchronizedGramian(WeightingWrapper):
    """A weighting whose Gramian is summed over ranks first. Built by :func:`synchronized`.

    A :class:`~labelgrad.aggregators.WeightingWrapper`: ``state_dict``, ``reset`` and
    ``diagnostics`` are the wrapped weighting's.
    """

    wraps_as = "synchronised by a Gramian all-reduce"

    def __init__(self, aggregator: GramianWeighting) -> None:
        super().__init__(aggregator)
        self._reducer = CheckedReducer(f"the Gramian of {type(aggregator).__name__}")

    def _weights(self, gramian: Tensor, /) -> Tensor:
        """The inner aggregator's weights of the global Gramian sum_r G_r / W^2."""
        world = gradient_world_size()
        if world > 1:
            (gramian,) = self._reducer.sum(gramian)
            # Each rank's losses are means over its shard: the global mean is 1/W of their sum.
            gramian = gramian / world**2
        w: Tensor = self.aggregator.weights(gramian)
        return w


def synchronized(aggregator: GramianWeighting) -> SynchronizedGramian:
    """Wrap a Gramian weighting so that every rank computes its weights from the global Gramian.

    One all-reduce of K x K floats per aggregation (checked once for matching shapes). A no-op
    without a process group.

    Args:
        aggregator: an ``lg.aggregators`` weighting (``weights(G) -> (K,)``).

    Example:
        >>> import torch, labelgrad as lg
        >>> from labelgrad.integrations.distributed import synchronized
        >>> agg = synchronized(lg.aggregators.Mean())
        >>> agg.weights(torch.eye(3)).tolist()   # one process: the inner weights
        [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """
    return SynchronizedGramian(aggregator)


def all_reduce_gradients(parameters: Iterable[Tensor] | nn.Module) -> None:
    """Average ``.grad`` over ranks in place (what DDP does), for gradients written outside DDP.

    Args:
        parameters: an ``nn.Module`` or parameters; those without a gradient are skipped
            (every rank must have the same ones).

    Example:
        >>> import torch
        >>> from labelgrad.integrations.distributed import all_reduce_gradients
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.full((2,), 3.0)
        >>> all_reduce_gradients([p]); p.grad.tolist()   # one process: unchanged
        [3.0, 3.0]
    """
    params = parameters.parameters() if isinstance(parameters, nn.Module) else parameters
    grads = [p.grad for p in params if p.grad is not None]
    if not is_distributed() or not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
