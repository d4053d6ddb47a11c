"""Which rows of each label-owned tensor have moved since the tensor's state was created.

A row that sits out the step in which its tensor's state is created (frozen at first, or absent
with ``skip_absent``) must later start as a new parameter would (see
:class:`labelgrad.rows.families.FreshRule`); the others continue from their state. The tensor's
scalar state (step counters, NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) stays shared by
its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["StartedRows"]


class StartedRows:
    """(C,) bool "has moved" masks, one per label-owned tensor.

    Tensors whose masks agree share one device tensor (a head's weight and bias), so a step
    computes each fresh-row mask once. The host flags ``all_started`` say "every row has
    started" without reading the masks back.

    Example:
        >>> import torch
        >>> s = StartedRows(3, torch.device("cpu"), [False, False])
        >>> s.masks[0] is s.masks[1]
        True
        >>> s.mark(torch.tensor([True, False, True]), [0, 1], lambda i: True)
        >>> s.fresh(0, None, True, True).tolist()
        [False, True, False]
    """

    def __init__(self, num_classes: int, device: torch.device, rows: Sequence[Any]) -> None:
        self.num_classes = num_classes
        self.device = device
        self.masks: list[Tensor] = []
        self.all_started: list[bool] = []
        self._fresh_cache: dict[int, Tensor | None] = {}
        self.set(rows)

    def set(self, rows: Sequence[Any]) -> None:
        """Set the masks from host values (a bool or a (C,) CPU bool tensor per tensor)."""
        shared: dict[object, Tensor] = {}
        self.masks = []
        for row in rows:
            key = row if isinstance(row, bool) else tuple(row.tolist())
            if key not in shared:
                value = torch.full((self.num_classes,), row) if isinstance(row, bool) else row
                shared[key] = value.to(self.device, torch.bool).clone()
            self.masks.append(shared[key])
        self.all_started = [bool(torch.as_tensor(row).all()) for row in rows]

    def new_step(self) -> None:
        """Forget the fresh-row masks of the previous step."""
        self._fresh_cache = {}

    def fresh(self, i: int, moving: Tensor | None, has_state: bool, tracks: bool) -> Tensor | None:
        """(C,) bool mask of rows of tensor ``i`` that move for the first time this step, or
        None when no row can (all started, the tensor has no state yet, or its family needs
        nothing for a late start: ``tracks`` False)."""
        if self.all_started[i] or not has_state or not tracks:
            return None
        mask = self.masks[i]
        if id(mask) not in self._fresh_cache:  # once per shared mask and step
            first = ~mask
            self._fresh_cache[id(mask)] = first if moving is None else moving & first
        return self._fresh_cache[id(mask)]

    def mark(self, moving: Tensor | None, active: list[int], tracks: Callable[[int], bool]) -> None:
        """Record that the ``moving`` rows (every row: None) of the ``active`` tensors moved.

        Masks of tensors whose family needs nothing for a late start (``tracks(i)`` False) are
        not kept up to date while some row rests: their resting state is the initial state.
        """
        update = [i for i in active if moving is None or (not self.all_started[i] and tracks(i))]
        # A mask shared with a tensor that does not take this update gets its own copy first.
        others = {id(self.masks[j]) for j in range(len(self.masks)) if j not in update}
        copies: dict[int, Tensor] = {}
        for i in update:
            mask = self.masks[i]
            if id(mask) in others:
                self.masks[i] = copies.setdefault(id(mask), mask.clone())
        done: set[int] = set()
        for i in update:
            mask = self.masks[i]
            if id(mask) not in done:
                done.add(id(mask))
                if moving is None:
                    mask.fill_(True)
                else:
                    mask |= moving
            if moving is None:
                self.all_started[i] = True
