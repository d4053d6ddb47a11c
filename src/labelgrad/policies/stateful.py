"""Base class for policies that keep statistics across batches."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from labelgrad._distributed import all_reduce_sum
from labelgrad.policies.base import Policy

__all__ = ["StatefulPolicy"]

Reduce = Literal["sum"]


class StatefulPolicy(Policy):
    """A policy whose statistics live in registered buffers.

    As in torchmetrics, subclasses declare each statistic once with :meth:`add_state`; the base
    class then gives them ``state_dict`` round-trips, ``.to(device)``, :meth:`reset` and a
    cross-rank reduction of each batch's increments (:meth:`reduce_increments`) for free, so that
    every rank of a DDP job applies the same weights.

    Example:
        A policy that counts the positive labels it has seen per class, in a few lines:

        >>> import torch, labelgrad as lg
        >>> class CountPositives(lg.StatefulPolicy):
        ...     def __init__(self, num_classes):
        ...         super().__init__()
        ...         self.add_state("seen", torch.zeros(num_classes))
        ...     def transform(self, grad, ctx):
        ...         if ctx.update_state:
        ...             t = ctx.require_targets(self)
        ...             (inc,) = self.reduce_increments(t.positive.float().sum(dim=(0, 1)))
        ...             self.seen.add_(inc)
        ...         return grad
        >>> policy = CountPositives(3)
        >>> z = torch.zeros(4, 3, requires_grad=True)
        >>> policy(z, torch.tensor([0, 2, 2, 2])).sum().backward()
        >>> policy.seen.tolist(), list(policy.state_dict())
        ([1.0, 0.0, 3.0], ['seen'])
    """

    def __init__(self) -> None:
        super().__init__()
        self._defaults: dict[str, Tensor] = {}

    def add_state(self, name: str, default: Tensor, reduce: Reduce = "sum") -> None:
        """Register a statistic as a persistent buffer, remembering its initial value.

        Args:
            name: the buffer's name.
            default: its initial value (cloned).
            reduce: how increments combine across ranks; only "sum" is used so far.
        """
        if reduce != "sum":
            raise ValueError(f"reduce must be 'sum', got {reduce!r}")
        self._defaults[name] = default.detach().clone()
        self.register_buffer(name, default.detach().clone())

    def reset(self) -> None:
        """Restore every statistic to its initial value, in place (device and dtype kept)."""
        for name, default in self._defaults.items():
            buf: Tensor = getattr(self, name)
            buf.copy_(default.to(buf.device))

    @staticmethod
    def reduce_increments(*increments: Tensor) -> list[Tensor]:
        """Sum this batch's increments over all ranks (one collective; no-op on one rank)."""
        return all_reduce_sum(*increments)

    @staticmethod
    def all_finite(*tensors: Tensor) -> Tensor:
        """A 0-d bool tensor: every entry of every tensor is finite (computed on the device)."""
        flags = [torch.isfinite(t).all() for t in tensors]
        return torch.stack(flags).all()
