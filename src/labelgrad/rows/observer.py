"""Label observation: which classes occur in the targets seen since the last optimizer step.

:class:`RowRules` and :class:`Router` both observe labels the same way, so they share one
implementation (:class:`ObservesLabels` over a :class:`ClassWindow`) and one protocol
(:class:`LabelObserver`), which the integrations test with ``isinstance`` to decide which
optimizers to feed the targets of each micro-batch.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from labelgrad._distributed import CheckedReducer
from labelgrad.targets import Encoding, Targets, TargetsLike

__all__ = ["ClassWindow", "LabelObserver", "ObservesLabels", "present_classes"]


def present_classes(
    targets: TargetsLike,
    num_classes: int,
    *,
    class_dim: int = 1,
    encoding: Encoding | None = None,
    like: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """The (C,) bool mask of classes with a positive label anywhere in ``targets``.

    Computed on the targets' device without a host synchronisation. ``class_dim``,
    ``encoding``, ``like`` and ``ignore_index`` are passed on to
    :meth:`labelgrad.Targets.coerce`. The encoding is never guessed from a shape: integer
    targets with more than one dimension need ``encoding=`` (``"index"`` for (N, *) class
    indices, ``"multi_hot"`` for (N, C, *) labels) or ``like=logits``.

    Raises:
        ValueError: integer targets of two or more dimensions without ``encoding`` or ``like``,
            or labels that do not fit ``num_classes``.

    Example:
        >>> import torch
        >>> present_classes(torch.tensor([2, 0, 2, -100]), 4).tolist()
        [True, False, True, False]
        >>> present_classes(torch.tensor([[1, 0, 0, 1]]), 4, encoding="multi_hot").tolist()
        [True, False, False, True]
        >>> present_classes(torch.tensor([[1, 255], [1, 1]]), 4, encoding="index",
        ...                 ignore_index=255).tolist()
        [False, True, False, False]
    """
    if (
        isinstance(targets, Tensor)
        and encoding is None
        and like is None
        and targets.dim() >= 2
        and not (targets.is_floating_point() or targets.dtype == torch.bool)
    ):
        raise ValueError(
            f"targets: integer labels of shape {tuple(targets.shape)} could be class indices "
            "(N, *) or multi-hot labels (N, C, *); pass encoding='index' or "
            "encoding='multi_hot' (or like=logits)"
        )
    if (
        isinstance(targets, Tensor)
        and like is None
        and encoding in (None, "index")
        and targets.dim() == 1
        and targets.device.type == "cpu"
        and not (targets.is_floating_point() or targets.dtype == torch.bool)
        and not torch.compiler.is_compiling()
    ):
        hit = _cpu_indices_present(targets, num_classes)
        if hit is not None:
            return hit
    t = Targets.coerce(
        targets,
        num_classes=num_classes,
        class_dim=class_dim,
        encoding=encoding,
        like=like,
        ignore_index=ignore_index,
    )
    if t.indices is not None:
        idx = t.indices.reshape(-1)
        hit = torch.zeros(num_classes + 1, dtype=torch.bool, device=idx.device)
        # Ignored entries go to the extra slot num_classes (no boolean indexing, no sync).
        safe = torch.where((idx >= 0) & (idx < num_classes), idx, num_classes)
        hit.index_fill_(0, safe, True)
        return hit[:num_classes]
    pos = t.positive.movedim(t.class_dim, -1).reshape(-1, num_classes)
    return pos.any(dim=0)


def _cpu_indices_present(idx: Tensor, num_classes: int) -> Tensor | None:
    """The common case in a few operators: 1-D CPU class indices, all in range (checked as
    :meth:`Targets.coerce` checks them, free on the CPU). None where some index is ignored or
    out of range: the general path then reads it (or names the bad value)."""
    hit = torch.zeros(num_classes, dtype=torch.bool)
    if idx.numel() == 0:
        return hit
    low, high = (int(v) for v in torch.aminmax(idx))
    if low < 0 or high >= num_classes:
        return None
    return hit.index_fill_(0, idx if idx.dtype == torch.long else idx.long(), True)


@runtime_checkable
class LabelObserver(Protocol):
    """An optimizer-like object that wants the labels of every micro-batch before its step.

    :class:`labelgrad.RowRules` and :class:`labelgrad.rows.Router` satisfy it; the Lightning
    callback, the Hugging Face trainer and the gradient-accumulation helpers feed the targets
    of each micro-batch to every optimizer that does (``isinstance(opt, LabelObserver)``).

    Example:
        >>> import torch, labelgrad as lg
        >>> head = torch.nn.Linear(2, 3)
        >>> isinstance(lg.RowRules(torch.optim.SGD(head.parameters(), lr=0.1), rows=head),
        ...            LabelObserver)
        True
        >>> isinstance(torch.optim.SGD(head.parameters(), lr=0.1), LabelObserver)
        False
    """

    num_classes: int

    def observe(
        self,
        targets: TargetsLike,
        *,
        class_dim: int = 1,
        encoding: Encoding | None = None,
        like: Tensor | None = None,
        ignore_index: int = -100,
    ) -> None:
        """Add the classes with a positive label in ``targets`` to this step's window."""

    def clear_observed(self) -> None:
        """Forget the classes observed since the last step."""


class ClassWindow:
    """The union of the classes observed since the window was last cleared.

    With a ``device`` the (C,) mask lives there from the start and is updated in place (a
    :class:`labelgrad.RowRules` keeps it beside its parameters); without one it takes the
    device of the first observation.

    Example:
        >>> import torch
        >>> w = ClassWindow(3, torch.device("cpu"))
        >>> w.add(torch.tensor([True, False, False])); w.add(torch.tensor([False, False, True]))
        >>> w.observed, w.present().tolist()
        (True, [True, False, True])
        >>> w.clear(); w.observed, w.present().tolist()
        (False, [False, False, False])
    """

    def __init__(
        self, num_classes: int, device: torch.device | None = None, *, what: str = "labels"
    ) -> None:
        self.num_classes = num_classes
        self.device = device
        self.observed = False
        self.mask: Tensor | None = (
            None if device is None else torch.zeros(num_classes, dtype=torch.bool, device=device)
        )
        self._reducer = CheckedReducer(f"the present classes of {what}")

    def add(self, hit: Tensor) -> None:
        """OR the (C,) bool mask ``hit`` into the window (no host synchronisation)."""
        if self.device is not None:
            assert self.mask is not None
            self.mask |= hit.to(self.device, non_blocking=True)
        elif self.mask is None:
            self.mask = hit
        else:
            self.mask = self.mask | hit.to(self.mask.device)
        self.observed = True

    def clear(self) -> None:
        """Forget every observed class."""
        if self.device is None:
            self.mask = None
        else:
            assert self.mask is not None
            self.mask.zero_()
        self.observed = False

    def union_over_ranks(self) -> Tensor:
        """The window's mask OR-ed over the ranks of a process group (itself on one rank), so
        that every rank moves the same rows; the window keeps the union."""
        assert self.mask is not None
        self.mask = self._reducer.any(self.mask)
        return self.mask

    def present(self) -> Tensor:
        """A copy of the (C,) bool mask (all False before any observation)."""
        if self.mask is None:
            return torch.zeros(self.num_classes, dtype=torch.bool)
        return self.mask.clone()


class ObservesLabels:
    """The label-observer half of :class:`labelgrad.RowRules` and :class:`labelgrad.rows.Router`:
    ``observe``, ``clear_observed`` and ``present`` over a :class:`ClassWindow`.

    A subclass sets ``num_classes`` and ``_window``; :meth:`_observe_more` lets it pass the
    targets on (a router to the observers it routes to).
    """

    num_classes: int
    _window: ClassWindow

    def observe(
        self,
        targets: TargetsLike,
        *,
        class_dim: int = 1,
        encoding: Encoding | None = None,
        like: Tensor | None = None,
        ignore_index: int = -100,
    ) -> None:
        """Add the classes with a positive label in ``targets`` to the classes present this step.

        Call it for every micro-batch of a gradient-accumulation window; the window closes at
        ``step``. Any label encoding is accepted (see :meth:`labelgrad.Targets.coerce`;
        ``class_dim``, ``encoding``, ``like`` and ``ignore_index`` are passed on to it), but it
        is never guessed from a shape: integer labels with two or more dimensions need
        ``encoding="index"`` or ``encoding="multi_hot"`` (or ``like=logits``).

        Example:
            >>> import torch, labelgrad as lg
            >>> head = torch.nn.Linear(2, 3)
            >>> opt = lg.RowRules(torch.optim.SGD(head.parameters(), lr=0.1), rows=head,
            ...                   skip_absent=True)
            >>> opt.observe(torch.tensor([0])); opt.observe(torch.tensor([2]))
            >>> opt.present.tolist()
            [True, False, True]
            >>> opt.observe(torch.tensor([[0, 1, 0]]), encoding="multi_hot")
            >>> opt.present.tolist()
            [True, True, True]
        """
        kwargs: dict[str, Any] = {
            "class_dim": class_dim,
            "encoding": encoding,
            "like": like,
            "ignore_index": ignore_index,
        }
        self._window.add(present_classes(targets, self.num_classes, **kwargs))
        self._observe_more(targets, kwargs)

    def _observe_more(self, targets: TargetsLike, kwargs: dict[str, Any]) -> None:
        """Hook: pass observed targets on (nothing by default)."""

    def clear_observed(self) -> None:
        """Forget the classes observed since the last step (``step`` does this itself)."""
        self._window.clear()

    @property
    def present(self) -> Tensor:
        """The (C,) bool mask of classes observed since the last step (a copy)."""
        return self._window.present()
