"""Per-class update rules for label-owned parameters, acting on the optimizer's update.

:class:`RowRules` coordinates: it observes labels (:mod:`labelgrad.rows.observer`), decides which
rows move, and steps each label-owned tensor through its family's fast kernel
(:mod:`labelgrad.rows.families`) or the exact snapshot path (:mod:`labelgrad.rows.snapshot`),
keeping track of rows that start late (:mod:`labelgrad.rows.started`), and projects the rows that
moved onto their max-norm balls (:mod:`labelgrad.rows.max_norm`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from labelgrad.rows import snapshot
from labelgrad.rows._spec import RowsLike, check_optimizer, owned_device, parse_rows
from labelgrad.rows.checkpoint import RowRulesCheckpoint
from labelgrad.rows.class_rules import ClassRules
from labelgrad.rows.families import family_of, fast_kernel
from labelgrad.rows.observer import ClassWindow, ObservesLabels, present_classes
from labelgrad.rows.started import StartedRows
from labelgrad.rows.wrapped import WrappedOptimizer
from labelgrad.targets import Encoding, TargetsLike

__all__ = ["RowRules", "present_classes"]


class RowRules(ClassRules, RowRulesCheckpoint, ObservesLabels, WrappedOptimizer):
    """Wrap any torch optimizer so that per-class rules apply to the rows of label-owned params.

    A class owns a slice of each label-owned parameter along its class axis (a row of a Linear
    head's weight and its bias entry). After each step, row ``c`` is exactly where it would be if
    it were its own parameter in a param group with ``lr * lr_scale[c]`` and
    ``weight_decay = weight_decay[c]``. Frozen rows, and with ``skip_absent=True`` the rows of
    classes with no positive label in any batch observed since the last step, do not move at all
    and neither does their optimizer state (momentum buffers, Adam moments, Adagrad sums): the
    rule acts on the update, so no momentum, moment or decoupled-decay drift remains. The step
    counter of a tensor is shared by its rows, as in :class:`torch.optim.SparseAdam`.

    A row that starts moving later (frozen at first, or absent from the first batches with
    ``skip_absent``) starts as a new parameter would: from the optimizer's initial state
    (Rprop's step sizes at ``lr``, SGD's momentum buffer from its first gradient), sharing only
    the tensor's step counter. With no rules set (nothing frozen, no ``lr_scale``,
    ``weight_decay`` or ``max_norm``, ``skip_absent=False``) a step is the wrapped optimizer's.

    Optimizers with a fast kernel in :mod:`labelgrad.rows.families` (Adam, AdamW, SGD) are stepped
    by labelgrad itself on label-owned parameters when a rule applies (the same update with
    per-row coefficients, about one pass per tensor); every other optimizer, foreach and fused
    variants included, goes through the exact snapshot path (:mod:`labelgrad.rows.snapshot`): copy
    the affected rows of the parameter and of every state tensor shaped like it, let the
    optimizer step, restore and rescale. ``lr_scale`` is exact for optimizers whose update is
    linear in ``lr`` (SGD, Adam, AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad, Adadelta,
    SparseAdam; a warning says so for the others, e.g. Rprop and ASGD); per-class
    ``weight_decay`` is supported for optimizers with L2 (coupled) or decoupled (AdamW-style)
    weight decay. Refused with a TypeError: optimizers whose ``step`` needs a closure (LBFGS)
    and optimizers that couple the rows of a parameter (Muon, Adafactor). State that is neither
    shaped like the parameter nor a scalar (a custom optimizer's) cannot be protected row by
    row: a warning names it.

    It is an optimizer: ``param_groups``, ``state``, ``zero_grad``, ``state_dict`` and
    ``add_param_group`` are the wrapped optimizer's, LR schedulers and
    ``torch.amp.GradScaler.step`` work on it. The step path makes no host synchronisation.

    ``max_norm`` (MaxNorm, Alshammari et al. 2022, "Long-tailed recognition via weight
    balancing"): after each step the weight row of each class that moved becomes
    ``w_c * min(1, r_c / ||w_c||)``; rows inside their ball keep their bits, frozen and absent
    rows are never projected, and neither is the bias (:mod:`labelgrad.rows.max_norm`).

    Args:
        optimizer: the optimizer that owns the label-owned parameters (and usually the rest of
            the model).
        rows: an ``nn.Linear`` (weight rows and bias entries), a parameter whose axis 0 is the
            class axis, or a list of those and ``(param, class_dim)`` pairs sharing one class set.
        frozen: classes whose rows never move (indices or a (C,) bool mask).
        lr_scale: (C,) non-negative multipliers of each row's learning rate (a scalar applies to
            every row).
        weight_decay: (C,) non-negative weight decay of each row, replacing the param group's
            weight decay for label-owned rows.
        skip_absent: rows of classes absent from every target observed since the last step stay
            bitwise unchanged, their state too. Needs :meth:`observe` or ``step(targets=...)``.
        num_classes: the number of classes; read from the class axis of ``rows`` when omitted.
        max_norm: the largest L2 norm of each class's weight row after a step: a number (every
            class) or a (C,) tensor; ``inf`` leaves a class unconstrained, 0 zeroes its row.
        fast: step label-owned rows with the family's own kernel where it has one (False
            forces the generic snapshot path).

    Example:
        >>> import torch, labelgrad as lg
        >>> head = torch.nn.Linear(4, 3)
        >>> opt = lg.RowRules(
        ...     torch.optim.AdamW(head.parameters(), lr=0.1, weight_decay=0.1),
        ...     rows=head, frozen=[0], skip_absent=True,
        ... )
        >>> before = head.weight.detach().clone()
        >>> head(torch.randn(8, 4)).square().sum().backward()
        >>> opt.step(targets=torch.tensor([1, 1, 0, 1]))  # class 0 is frozen, class 2 absent
        >>> moved = (head.weight != before).any(dim=1)
        >>> moved.tolist()
        [False, True, False]
        >>> opt = lg.RowRules(torch.optim.SGD(head.parameters(), lr=1.0), rows=head, max_norm=0.5)
        >>> head(torch.randn(8, 4)).square().sum().backward(); opt.step()
        >>> bool((head.weight.norm(dim=1) <= 0.5 + 1e-6).all())
        True
    """

    _step_supports_amp_scaling = False

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        rows: RowsLike,
        frozen: object = None,
        lr_scale: object = None,
        weight_decay: object = None,
        skip_absent: bool = False,
        num_classes: int | None = None,
        *,
        max_norm: object = None,
        fast: bool = True,
    ) -> None:
        check_optimizer(optimizer)
        if not isinstance(skip_absent, bool):
            raise TypeError(f"skip_absent must be a bool, got {type(skip_absent).__name__}")
        self.optimizer = optimizer
        self._family = family_of(optimizer)
        self._params, self.num_classes = parse_rows(rows, num_classes)
        self._device = owned_device(optimizer, self._params)
        self.skip_absent = skip_absent
        self.fast = bool(fast)
        self._set_rules(frozen, lr_scale, weight_decay, max_norm)
        self._window = ClassWindow(self.num_classes, self._device, what="RowRules")
        self._in_closure = False
        has_state = [bool(optimizer.state.get(lp.param)) for lp in self._params]
        self._started = StartedRows(self.num_classes, self._device, has_state)
        self._warned_state: set[str] = set()
        self._lr_scale_cache: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) the gradients of every parameter of the wrapped optimizer.

        It also forgets the classes observed so far: a step that ``GradScaler`` skipped (inf/NaN
        gradients) must not carry its batch's classes into the next step.
        """
        self.optimizer.zero_grad(set_to_none=set_to_none)
        if not self._in_closure:
            self.clear_observed()

    def __repr__(self) -> str:
        return (
            f"RowRules(num_classes={self.num_classes}, skip_absent={self.skip_absent}, "
            f"optimizer={self.optimizer!r})"
        )

    # -- the step -------------------------------------------------------------------------------

    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        targets: TargetsLike | None = None,
        class_dim: int = 1,
        encoding: Encoding | None = None,
        like: Tensor | None = None,
        ignore_index: int = -100,
    ) -> Any:
        """Step the wrapped optimizer with the row rules applied.

        Args:
            closure: re-evaluates the model and returns the loss; called once, before the
                update (optimizers that need a closure, such as LBFGS, are refused).
            targets: the batch's labels; same as calling :meth:`observe` first (with
                ``class_dim``, ``encoding``, ``like`` and ``ignore_index``).
            class_dim: see :meth:`observe`.
            encoding: see :meth:`observe`.
            like: see :meth:`observe`.
            ignore_index: see :meth:`observe`.

        Returns:
            The closure's loss, or None.

        Raises:
            RuntimeError: ``skip_absent=True`` and no targets were observed since the last step.
        """
        if targets is not None:
            self.observe(
                targets,
                class_dim=class_dim,
                encoding=encoding,
                like=like,
                ignore_index=ignore_index,
            )
        loss = None
        if closure is not None:
            # Evaluated first, so that the gradients it computes decide which rows are stepped;
            # a zero_grad inside it keeps the observed classes.
            self._in_closure = True
            try:
                with torch.enable_grad():
                    loss = closure()
            finally:
                self._in_closure = False
        if self.skip_absent and not self._window.observed:
            raise RuntimeError(
                "RowRules(skip_absent=True) needs the batch's targets: call "
                "opt.observe(targets) for each micro-batch or opt.step(targets=targets)"
            )
        if self.skip_absent:
            # Under DDP/FSDP every rank must move the same rows: the present classes are the
            # union over ranks, as for one process on the global batch (a no-op on one rank).
            self._window.union_over_ranks()
        moving = self._moving()
        try:
            with torch.no_grad():
                self._step(moving)
        finally:
            self.clear_observed()
        return loss

    def _moving(self) -> Tensor | None:
        """(C,) bool mask of rows that move this step, or None when every row moves."""
        if self.skip_absent:
            assert self._window.mask is not None
            return self._window.mask & ~self._frozen
        if self._frozen_index.numel():
            return ~self._frozen
        return None

    def _step(self, moving: Tensor | None) -> None:
        self._started.new_step()
        active = [i for i, lp in enumerate(self._params) if lp.param.grad is not None]
        if self._bare(moving, active):
            # Nothing to do: exactly the wrapped optimizer's step (bitwise).
            self.optimizer.step()
        else:
            self._ruled_step(moving, active)
        self._started.mark(moving, active, self._tracks_fresh)
        self._project_moved(moving, active)

    def _ruled_step(self, moving: Tensor | None, active: list[int]) -> None:
        groups = {i: self.group_of(self._params[i].param) for i in active}
        kernel = fast_kernel(self.optimizer) if self.fast else None
        fast = [
            i
            for i in active
            if kernel is not None and kernel.supports(groups[i], self._params[i].param)
        ]
        slow = [i for i in active if i not in fast]
        rules = self._step_rules()
        # Snapshot path: take the affected rows before the optimizer moves them.
        snaps = {
            i: snapshot.take(
                rules, self._params[i], groups[i], moving, self._fresh(i, moving, groups[i])
            )
            for i in slow
        }
        # Fast path: hide the label-owned gradients from the optimizer, step them ourselves.
        hidden = {i: self._params[i].param.grad for i in fast}
        for i in fast:
            self._params[i].param.grad = None
        try:
            self.optimizer.step()
        finally:
            for i, g in hidden.items():
                self._params[i].param.grad = g
        for i in slow:
            snapshot.restore(rules, self._params[i], groups[i], moving, snaps[i])
        # The per-row factors are shared by the tensors of one group, dtype and fresh mask.
        coefs: dict[tuple[int, torch.dtype, int | None], Any] = {}
        for i in fast:
            assert kernel is not None
            lp, group = self._params[i], groups[i]
            scale = self._lr_scale_in(lp.param.dtype)
            fresh = self._fresh(i, moving, group)
            key = (id(group), lp.param.dtype, None if fresh is None else id(fresh))
            if key not in coefs:
                coefs[key] = kernel.coefficients(group, lp.param.dtype, moving, scale, fresh)
            wd = self._weight_decay
            kernel.step(self.optimizer, group, lp, coefs[key], weight_decay=wd, lr_scale=scale)

    def _bare(self, moving: Tensor | None, active: list[int]) -> bool:
        """True when this step has no rule to apply and no row starting late."""
        if moving is not None or self._lr_scale is not None or self._weight_decay is not None:
            return False
        state, started = self.optimizer.state, self._started.all_started
        return all(started[i] or not state.get(self._params[i].param) for i in active)

    def _tracks_fresh(self, i: int) -> bool:
        return self._family.tracks_fresh(self.group_of(self._params[i].param))

    def _fresh(self, i: int, moving: Tensor | None, group: dict[str, Any]) -> Tensor | None:
        """(C,) bool rows of param ``i`` moving for the first time this step, or None."""
        if self._started.all_started[i]:
            return None
        has_state = bool(self.optimizer.state.get(self._params[i].param))
        tracks = has_state and self._family.tracks_fresh(group)
        return self._started.fresh(i, moving, has_state, tracks)
