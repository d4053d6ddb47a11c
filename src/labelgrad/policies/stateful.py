"""Base class for policies that keep statistics across batches."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from labelgrad._distributed import CheckedReducer
from labelgrad.policies.policy import Policy

__all__ = ["StatefulPolicy", "WindowMerge"]

Reduce = Literal["sum"]
WindowMerge = Literal["sum", "count", "any", "last"]
"""How a statistic combines over the micro-batches of an accumulation window:
``"sum"``: increments add up (committed only if every ``"count"`` statistic advanced in every
micro-batch, i.e. no micro-batch was non-finite); ``"count"``: a per-batch counter, advances by
its smallest increment (one per window); ``"any"``: advances by its largest increment;
``"last"``: keeps the value after the last micro-batch."""


class StatefulPolicy(Policy):
    """A policy whose statistics live in registered buffers.

    As in torchmetrics, subclasses declare each statistic once with :meth:`add_state`; the base
    class then gives them ``state_dict`` round-trips, ``.to(device)``, :meth:`reset` and a
    cross-rank reduction of each batch's increments (:meth:`reduce_increments`) for free, so that
    every rank of a DDP job applies the same weights. Accumulation windows
    (:func:`labelgrad.accumulation_window`) use the public protocol :meth:`open_window`,
    :meth:`end_backward` (called by the gate after each backward pass) and :meth:`close_window`.

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

    _updates_state: ClassVar[bool] = True  # buffers change in backward (see policy.py)

    def __init__(self) -> None:
        super().__init__()
        self._defaults: dict[str, Tensor] = {}
        self._window_merge: dict[str, WindowMerge] = {}
        self._window_start: dict[str, Tensor] | None = None
        self._window_parts: list[dict[str, Tensor]] = []
        self._reducer = CheckedReducer(f"the statistics of {type(self).__name__}")

    def add_state(
        self, name: str, default: Tensor, reduce: Reduce = "sum", window: WindowMerge = "sum"
    ) -> None:
        """Register a statistic as a persistent buffer, remembering its initial value.

        Args:
            name: the buffer's name.
            default: its initial value (cloned).
            reduce: how increments combine across ranks; only "sum" is used so far.
            window: how it combines over an accumulation window (see :data:`WindowMerge`).
        """
        if reduce != "sum":
            raise ValueError(f"reduce must be 'sum', got {reduce!r}")
        if window not in ("sum", "count", "any", "last"):
            raise ValueError(f"window must be 'sum', 'count', 'any' or 'last', got {window!r}")
        self._defaults[name] = default.detach().clone()
        self._window_merge[name] = window
        self.register_buffer(name, default.detach().clone())

    # The accumulation-window protocol (driven by labelgrad.accumulation_window): every
    # micro-batch sees the state of the window's start; the increments are set aside after each
    # backward pass (end_backward, called by the gate) and committed once at the end.

    @property
    def window_open(self) -> bool:
        """Whether an accumulation window is open on this policy."""
        return self._window_start is not None

    def open_window(self) -> None:
        """Start an accumulation window: remember the current statistics.

        Until :meth:`close_window`, each backward pass applies the weights of this state, and
        its statistics are set aside (:meth:`end_backward`) instead of accumulating.

        Raises:
            ValueError: a window is already open on this policy.
        """
        if self._window_start is not None:
            raise ValueError(f"{type(self).__name__} is already inside an open accumulation window")
        self._window_start = {n: getattr(self, n).detach().clone() for n in self._defaults}
        self._window_parts = []

    def end_backward(self) -> None:
        """Inside a window: set this micro-batch's increments aside, restore the window's start.

        Outside a window it does nothing. Called by the gate after every backward pass.
        """
        super().end_backward()
        start = self._window_start
        if start is None:
            return
        part: dict[str, Tensor] = {}
        for name, merge in self._window_merge.items():
            buf: Tensor = getattr(self, name)
            part[name] = buf.detach().clone() if merge == "last" else buf.detach() - start[name]
            buf.copy_(start[name])
        self._window_parts.append(part)

    def close_window(self, commit: bool) -> None:
        """End the window; with ``commit``, add the micro-batches' merged increments.

        Each statistic merges as its :data:`WindowMerge` says; without ``commit`` (the block
        raised) the statistics stay as they were when the window opened.
        """
        start, parts = self._window_start, self._window_parts
        self._window_start, self._window_parts = None, []
        if start is None or not parts or not commit:
            return
        merged = {
            name: _merge(torch.stack([p[name] for p in parts]), merge)
            for name, merge in self._window_merge.items()
        }
        ok = torch.ones((), dtype=torch.bool, device=start[next(iter(start))].device)
        for name, merge in self._window_merge.items():
            if merge == "count":
                ok = ok & (merged[name] > 0).all()
        for name, merge in self._window_merge.items():
            buf = getattr(self, name)
            if merge == "last":
                buf.copy_(merged[name])
            elif merge == "sum":
                buf.copy_(start[name] + torch.where(ok, merged[name], 0).to(buf.dtype))
            else:
                buf.copy_(start[name] + merged[name])

    def reset(self) -> None:
        """Restore every statistic to its initial value, in place (device and dtype kept)."""
        for name, default in self._defaults.items():
            buf: Tensor = getattr(self, name)
            buf.copy_(default.to(buf.device))

    def reduce_increments(self, *increments: Tensor) -> list[Tensor]:
        """Sum this batch's increments over all ranks (one collective; no-op on one rank).

        The first reduction checks that every rank holds increments of the same shapes and
        raises the same ValueError on every rank otherwise (instead of hanging).
        """
        return self._reducer.sum(*increments)

    @staticmethod
    def all_finite(*tensors: Tensor) -> Tensor:
        """A 0-d bool tensor: every entry of every tensor is finite (computed on the device)."""
        flags = [torch.isfinite(t).all() for t in tensors]
        return torch.stack(flags).all()


def _merge(stack: Tensor, merge: WindowMerge) -> Tensor:
    """Combine a statistic's per-micro-batch parts (stacked on axis 0) as ``merge`` says."""
    if merge == "sum":
        return stack.sum(0)
    if merge == "count":
        return stack.amin(0)
    if merge == "any":
        return stack.amax(0)
    return stack[-1]
