"""Amortized weights: recompute the Gramian weighting every few steps, reuse it in between."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.aggregation.weighing import check_aggregator
from labelgrad.aggregators.aggregator_types import WeightingWrapper

__all__ = ["Amortized"]


class Amortized(WeightingWrapper):
    """Wrap an aggregator so that its weights are recomputed only every ``every`` steps.

    On a step where the weights are due, :func:`labelgrad.aggregate_backward` computes the
    Gramian with its engine and stores the weights here; on the other steps it skips the Gramian
    and applies the cached weights with one weighted backward (the shared parameters get the
    gradient of ``sum_k w_k L_k``, the others the plain gradient). The cache and the step counter
    are buffers: ``state_dict`` checkpoints them and ``.to(device)`` moves them. A change in the
    number of losses K forces a recomputation.

    Args:
        aggregator: the wrapped weighting (``weights(G) -> (K,)``); a
            :class:`~labelgrad.aggregators.JacobianAggregator` cannot be amortized (TypeError).
        every: recompute the weights on steps 0, every, 2 * every, ...

    Example:
        >>> import torch, labelgrad as lg
        >>> class Mean:
        ...     def weights(self, G):
        ...         return torch.full((G.shape[0],), 1.0 / G.shape[0])
        >>> agg = lg.aggregation.Amortized(Mean(), every=4)
        >>> net = torch.nn.Linear(3, 2)
        >>> cached = []
        >>> for _ in range(5):
        ...     losses = lg.per_label_losses(net(torch.randn(6, 3)), torch.randint(0, 2, (6, 2)))
        ...     r = lg.aggregate_backward(losses, shared=net.parameters(), aggregator=agg)
        ...     cached.append(r.gramian is None)
        >>> cached
        [False, True, True, True, False]
        >>> int(agg.step)
        5
    """

    step: Tensor
    cached_weights: Tensor
    wraps_as = "amortized"

    def __init__(self, aggregator: Any, every: int = 8) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        check_aggregator(aggregator)
        super().__init__(aggregator)
        self.every = every
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("cached_weights", torch.zeros(0))
        self._host_step = 0  # mirrors ``step`` on the host: deciding needs no device sync

    def due(self, k: int) -> bool:
        """True when this step must recompute the weights (schedule, or K changed)."""
        return self._host_step % self.every == 0 or self.cached_weights.numel() != k

    def store(self, weights: Tensor) -> None:
        """Cache freshly computed weights and count the step."""
        self.cached_weights = weights.detach().clone()
        self._advance()

    def cached(self, k: int, like: Tensor) -> Tensor:
        """A copy of the cached weights (count the step)."""
        self._advance()
        return self.cached_weights.to(device=like.device, copy=True)

    def reset(self) -> None:
        """Forget the cached weights and the step count, and reset the wrapped weighting."""
        super().reset()
        self.cached_weights = torch.zeros(0, device=self.step.device)
        self.step.zero_()
        self._host_step = 0

    def _advance(self) -> None:
        self._host_step += 1
        self.step.add_(1)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._check_saved_type(state_dict, prefix)  # before the resize: refused = untouched
        key = prefix + "cached_weights"
        if key in state_dict:
            self.cached_weights = torch.empty_like(state_dict[key], device=self.step.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._host_step = int(self.step)
