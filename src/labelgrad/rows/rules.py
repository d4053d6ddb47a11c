"""Per-class update rules for label-owned parameters, acting on the optimizer's update."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from labelgrad._distributed import CheckedReducer
from labelgrad.rows import _fast, _fresh
from labelgrad.rows._families import LR_LINEAR, decay_kind, refusal
from labelgrad.rows._spec import (
    LabelParam,
    RowsLike,
    checked_rules_state,
    class_mask,
    class_values,
    parse_rows,
)
from labelgrad.targets import Encoding, Targets, TargetsLike

__all__ = ["RowRules", "present_classes"]


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


def _check_optimizer(optimizer: object) -> None:
    """Raise unless ``optimizer`` is a torch optimizer that :class:`RowRules` can wrap."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if isinstance(optimizer, RowRules):
        raise TypeError("optimizer is already a RowRules; put all rows in one RowRules")
    reason = refusal(optimizer)
    if reason is not None:
        raise TypeError(f"optimizer: RowRules cannot wrap {type(optimizer).__name__}: {reason}")


def _owned_device(optimizer: torch.optim.Optimizer, params: list[LabelParam]) -> torch.device:
    """The one device of ``params``; raise if one is not in ``optimizer`` or devices differ."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for lp in params:
        if id(lp.param) not in owned:
            raise ValueError(
                f"rows: a parameter of shape {tuple(lp.param.shape)} is not in the "
                "optimizer's param_groups"
            )
    devices = {lp.param.device for lp in params}
    if len(devices) != 1:
        raise ValueError(f"rows: label-owned parameters must share one device, got {devices}")
    return devices.pop()


class RowRules(torch.optim.Optimizer):
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
    the tensor's step counter. With no rules set (nothing frozen, no ``lr_scale`` or
    ``weight_decay``, ``skip_absent=False``) a step is exactly the wrapped optimizer's step.

    Adam, AdamW and SGD are stepped by labelgrad itself on label-owned parameters when a rule
    applies (the same update with per-row coefficients, about one pass per tensor); every other
    optimizer, foreach and fused variants included, goes through the exact snapshot path: copy
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
        fast: step Adam/AdamW/SGD label-owned rows with labelgrad's own kernel (False forces
            the generic snapshot path).

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
        fast: bool = True,
    ) -> None:
        # Deliberately no Optimizer.__init__: param_groups and state are the wrapped optimizer's.
        _check_optimizer(optimizer)
        if not isinstance(skip_absent, bool):
            raise TypeError(f"skip_absent must be a bool, got {type(skip_absent).__name__}")
        self.optimizer = optimizer
        self._params, self.num_classes = parse_rows(rows, num_classes)
        self._device = _owned_device(optimizer, self._params)
        self.skip_absent = skip_absent
        self.fast = bool(fast)
        self._set_rules(frozen, lr_scale, weight_decay)
        self._present = torch.zeros(self.num_classes, dtype=torch.bool, device=self._device)
        self._present_reducer = CheckedReducer("the present classes of RowRules")
        self._observed = False
        self._in_closure = False
        # Rows that have moved since their tensor's state was created (per label-owned param);
        # the others start from the optimizer's initial state when they first move. The host
        # flags say "every row has started" without reading the masks back. Params whose masks
        # agree share one tensor (a head's weight and bias), so a step computes each once.
        self._started: list[Tensor] = []
        self._share_started([bool(optimizer.state.get(lp.param)) for lp in self._params])
        self._all_started = [bool(optimizer.state.get(lp.param)) for lp in self._params]
        self._fresh_cache: dict[int, Tensor | None] = {}
        self._warned_state: set[str] = set()
        self._lr_scale_cache: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    def _set_rules(self, frozen: object, lr_scale: object, weight_decay: object) -> None:
        """Parse and check the per-class rules onto the parameters' device."""
        c, optimizer = self.num_classes, self.optimizer
        self._frozen = class_mask(frozen, "frozen", c).to(self._device)
        self._frozen_index = self._frozen.nonzero().flatten()
        self._lr_scale = _on(class_values(lr_scale, "lr_scale", c), self._device)
        self._weight_decay = _on(class_values(weight_decay, "weight_decay", c), self._device)
        if self._lr_scale is not None and not isinstance(optimizer, LR_LINEAR):
            warnings.warn(
                f"lr_scale scales the update of {type(optimizer).__name__}; that equals a "
                "smaller learning rate only for optimizers whose update is linear in lr",
                stacklevel=3,
            )
        if self._weight_decay is not None:
            for lp in self._params:
                if decay_kind(optimizer, self._group_of(lp.param)) is None:
                    raise TypeError(
                        f"weight_decay: per-class weight decay is not supported for "
                        f"{type(optimizer).__name__} (known: optimizers with L2 or decoupled "
                        "weight decay such as SGD, Adam, AdamW, RMSprop, Adagrad)"
                    )

    # -- the optimizer interface: everything but step belongs to the wrapped optimizer ----------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's param groups."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        """The wrapped optimizer's state."""
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        """The wrapped optimizer's defaults."""
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) the gradients of every parameter of the wrapped optimizer.

        It also forgets the classes observed so far: a step that ``GradScaler`` skipped (inf/NaN
        gradients) must not carry its batch's classes into the next step.
        """
        self.optimizer.zero_grad(set_to_none=set_to_none)
        if not self._in_closure:
            self.clear_observed()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to the wrapped optimizer."""
        self.optimizer.add_param_group(param_group)

    def register_step_pre_hook(self, hook: Any) -> Any:
        """Register a step pre-hook on the wrapped optimizer (it receives that optimizer)."""
        return self.optimizer.register_step_pre_hook(hook)

    def register_step_post_hook(self, hook: Any) -> Any:
        """Register a step post-hook on the wrapped optimizer (it receives that optimizer)."""
        return self.optimizer.register_step_post_hook(hook)

    def __repr__(self) -> str:
        return (
            f"RowRules(num_classes={self.num_classes}, skip_absent={self.skip_absent}, "
            f"optimizer={self.optimizer!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- the rules ------------------------------------------------------------------------------

    @property
    def frozen(self) -> Tensor:
        """The (C,) bool mask of frozen classes (a copy)."""
        return self._frozen.clone()

    def freeze(self, classes: object) -> None:
        """Freeze the rows of ``classes`` from the next step on (their state is kept)."""
        self._set_frozen(self._frozen.cpu() | class_mask(classes, "classes", self.num_classes))

    def unfreeze(self, classes: object) -> None:
        """Let the rows of ``classes`` move again, resuming from their state before freezing."""
        self._set_frozen(self._frozen.cpu() & ~class_mask(classes, "classes", self.num_classes))

    def _set_frozen(self, mask: Tensor) -> None:
        self._frozen = mask.to(self._device)
        self._frozen_index = mask.nonzero().flatten().to(self._device)

    @property
    def lr_scale(self) -> Tensor | None:
        """The (C,) float64 per-class lr multipliers, or None."""
        return None if self._lr_scale is None else self._lr_scale.clone()

    @lr_scale.setter
    def lr_scale(self, value: object) -> None:
        self._lr_scale = _on(class_values(value, "lr_scale", self.num_classes), self._device)

    @property
    def weight_decay(self) -> Tensor | None:
        """The (C,) float64 per-class weight decay, or None (the param group's)."""
        return None if self._weight_decay is None else self._weight_decay.clone()

    # -- labels ---------------------------------------------------------------------------------

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
        :meth:`step`. Any label encoding is accepted (see :meth:`labelgrad.Targets.coerce`;
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
        hit = present_classes(
            targets,
            self.num_classes,
            class_dim=class_dim,
            encoding=encoding,
            like=like,
            ignore_index=ignore_index,
        )
        self._present |= hit.to(self._device, non_blocking=True)
        self._observed = True

    def clear_observed(self) -> None:
        """Forget the classes observed since the last step (``step`` does this itself)."""
        self._present.zero_()
        self._observed = False

    @property
    def present(self) -> Tensor:
        """The (C,) bool mask of classes observed since the last step (a copy)."""
        return self._present.clone()

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
        if self.skip_absent and not self._observed:
            raise RuntimeError(
                "RowRules(skip_absent=True) needs the batch's targets: call "
                "opt.observe(targets) for each micro-batch or opt.step(targets=targets)"
            )
        if self.skip_absent:
            # Under DDP/FSDP every rank must move the same rows: the present classes are the
            # union over ranks, as for one process on the global batch (a no-op on one rank).
            self._present = self._present_reducer.any(self._present)
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
            return self._present & ~self._frozen
        if self._frozen_index.numel():
            return ~self._frozen
        return None

    def _group_of(self, param: Tensor) -> dict[str, Any]:
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(
            f"rows: a parameter of shape {tuple(param.shape)} is no longer in the optimizer"
        )

    def _step(self, moving: Tensor | None) -> None:
        self._fresh_cache = {}
        active = [i for i, lp in enumerate(self._params) if lp.param.grad is not None]
        if self._bare(moving, active):
            # Nothing to do: exactly the wrapped optimizer's step (bitwise).
            self.optimizer.step()
            self._mark_started(moving, active)
            return
        groups = {i: self._group_of(self._params[i].param) for i in active}
        fast = [
            i
            for i in active
            if self.fast and _fast.supports(self.optimizer, groups[i], self._params[i].param)
        ]
        slow = [i for i in active if i not in fast]
        # Snapshot path: take the affected rows before the optimizer moves them.
        snaps = {i: self._snapshot(i, groups[i], moving) for i in slow}
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
            self._restore(self._params[i], groups[i], moving, snaps[i])
        coefs: dict[tuple[int, torch.dtype], _fast.RowCoefficients] = {}
        sgd_coefs: dict[tuple[int, torch.dtype, int | None], _fast.SGDRows] = {}
        for i in fast:
            if isinstance(self.optimizer, torch.optim.SGD):
                self._sgd_fast(i, groups[i], moving, sgd_coefs)
                continue
            # Adam's initial state is zeros, which resting rows keep: no fresh-row handling.
            # The per-row factors are shared by the tensors of one group and dtype.
            dtype = self._params[i].param.dtype
            key = (id(groups[i]), dtype)
            if key not in coefs:
                scale = self._lr_scale_in(dtype)
                coefs[key] = _fast.coefficients(groups[i], dtype, moving, scale)
            _fast.adam_step(
                self.optimizer,
                groups[i],
                self._params[i],
                coefs[key],
                weight_decay=self._weight_decay,
            )
        self._mark_started(moving, active)

    def _sgd_fast(
        self,
        i: int,
        group: dict[str, Any],
        moving: Tensor | None,
        cache: dict[tuple[int, torch.dtype, int | None], _fast.SGDRows],
    ) -> None:
        lp = self._params[i]
        dtype = lp.param.dtype
        scale = self._lr_scale_in(dtype)
        fresh = self._fresh_rows(i, moving)
        key = (id(group), dtype, None if fresh is None else id(fresh))
        if key not in cache:
            cache[key] = _fast.sgd_rows(group, dtype, moving, scale, fresh)
        rows = cache[key]
        _fast.sgd_step(
            group,
            self.optimizer.state[lp.param],
            lp,
            rows,
            weight_decay=self._weight_decay,
            lr_scale=scale,
        )

    def _lr_scale_in(self, dtype: torch.dtype) -> Tensor | None:
        """``lr_scale`` in ``dtype``, converted once per value."""
        if self._lr_scale is None:
            return None
        cached = self._lr_scale_cache.get(dtype)
        if cached is None or cached[0] is not self._lr_scale:
            cached = (self._lr_scale, self._lr_scale.to(dtype))
            self._lr_scale_cache[dtype] = cached
        return cached[1]

    def _bare(self, moving: Tensor | None, active: list[int]) -> bool:
        """True when this step has no rule to apply and no row starting late."""
        if moving is not None or self._lr_scale is not None or self._weight_decay is not None:
            return False
        state = self.optimizer.state
        return all(self._all_started[i] or not state.get(self._params[i].param) for i in active)

    def _share_started(self, rows: list[Any]) -> None:
        """Set the started masks from host values (a bool or a (C,) CPU bool tensor per param);
        params with equal values share one device tensor."""
        shared: dict[object, Tensor] = {}
        self._started = []
        for row in rows:
            key = row if isinstance(row, bool) else tuple(row.tolist())
            if key not in shared:
                value = torch.full((self.num_classes,), row) if isinstance(row, bool) else row
                shared[key] = value.to(self._device, torch.bool).clone()
            self._started.append(shared[key])

    def _mark_started(self, moving: Tensor | None, active: list[int]) -> None:
        update = [
            i
            for i in active
            if moving is None or (not self._all_started[i] and self._tracks_fresh(i))
        ]
        # A mask shared with a param that does not take this update gets its own copy first.
        others = {id(self._started[j]) for j in range(len(self._params)) if j not in update}
        copies: dict[int, Tensor] = {}
        for i in update:
            mask = self._started[i]
            if id(mask) in others:
                self._started[i] = copies.setdefault(id(mask), mask.clone())
        done: set[int] = set()
        for i in update:
            mask = self._started[i]
            if id(mask) not in done:
                done.add(id(mask))
                if moving is None:
                    mask.fill_(True)
                else:
                    mask |= moving
            if moving is None:
                self._all_started[i] = True

    def _tracks_fresh(self, i: int) -> bool:
        """Whether rows of param ``i`` that start late need anything but their resting state
        (Rprop, SGD with momentum); for the others the state rows a row kept while resting
        are already its initial state, so the started mask is not kept up to date."""
        group = self._group_of(self._params[i].param)
        return _fresh.tracks(self.optimizer, group)

    def _fresh_rows(self, i: int, moving: Tensor | None) -> Tensor | None:
        """(C,) bool mask of rows of param ``i`` that move for the first time this step, or
        None when no row can (all started, or the tensor has no state yet)."""
        if self._all_started[i] or not self.optimizer.state.get(self._params[i].param):
            return None
        if not self._tracks_fresh(i):
            return None
        mask = self._started[i]
        if id(mask) not in self._fresh_cache:  # once per shared mask and step
            first = ~mask
            self._fresh_cache[id(mask)] = first if moving is None else moving & first
        return self._fresh_cache[id(mask)]

    def _snapshot(self, i: int, group: dict[str, Any], moving: Tensor | None) -> dict[str, Any]:
        lp = self._params[i]
        p, dim = lp.param, lp.class_dim
        fresh = self._fresh_rows(i, moving)
        snap: dict[str, Any] = {"fresh": fresh}
        # A DTensor (FSDP2) parameter cannot be indexed by class across its shards: take the
        # whole-tensor path, which selects rows with a broadcast mask (see LabelParam.per_class).
        dynamic = self.skip_absent or hasattr(p, "device_mesh")
        needs_param = dynamic or self._lr_scale is not None
        kind = decay_kind(self.optimizer, group) if self._weight_decay is not None else None
        first_step = fresh is not None and _fresh.needs_first_step(self.optimizer, group)
        if kind == "decoupled" or first_step:
            needs_param = True
        if needs_param:
            snap["param"] = p.detach().clone()
        elif moving is not None:
            snap["param_rows"] = p.detach().index_select(dim, self._frozen_index)
        state = self.optimizer.state.get(p, {})
        like = self._row_state(p, state)
        snap["keys"] = set(state)
        if moving is not None:
            if dynamic:
                snap["state"] = {k: v.clone() for k, v in like.items()}
            else:
                snap["state_rows"] = {
                    k: v.index_select(dim, self._frozen_index) for k, v in like.items()
                }
        if fresh is not None:
            self._reset_fresh(lp, group, like, fresh)
        grad = p.grad
        assert grad is not None
        if kind == "coupled":
            assert self._weight_decay is not None
            snap["grad"] = grad.clone()
            extra = self._weight_decay.to(p.dtype) - float(group.get("weight_decay", 0.0))
            sign = -1.0 if group.get("maximize", False) else 1.0
            grad.addcmul_(p.detach(), lp.per_class(extra), value=sign)
        if first_step:
            # The gradient as the optimizer sees it (foreach SGD may update it in place).
            snap["first_grad"] = grad.clone()
        return snap

    def _row_state(self, p: Tensor, state: dict[str, Any]) -> dict[str, Tensor]:
        """The state tensors shaped like ``p``; warns (once per key) about any other shape
        that a rule cannot protect row by row."""
        like: dict[str, Tensor] = {}
        for k, v in state.items():
            if not isinstance(v, Tensor):
                continue
            if v.shape == p.shape:
                like[k] = v
            elif v.dim() > 0 and k not in self._warned_state:
                self._warned_state.add(k)
                warnings.warn(
                    f"RowRules: the state {k!r} of shape {tuple(v.shape)} of "
                    f"{type(self.optimizer).__name__} is not shaped like its parameter "
                    f"{tuple(p.shape)}; frozen and absent rows cannot protect it",
                    stacklevel=4,
                )
        return like

    def _reset_fresh(
        self, lp: LabelParam, group: dict[str, Any], like: dict[str, Tensor], fresh: Tensor
    ) -> None:
        """Rows moving for the first time start from the state's initial value where that is
        not 0 (Rprop's step size is the current lr); zero-initialised state already holds it."""
        for k, v in like.items():
            init = _fresh.initial_value(self.optimizer, group, k)
            if init is None or (isinstance(init, float) and init == 0.0):
                continue
            torch.where(lp.per_class(fresh), _value(init, v), v, out=v)

    def _restore(
        self, lp: LabelParam, group: dict[str, Any], moving: Tensor | None, snap: dict[str, Any]
    ) -> None:
        p, dim = lp.param.detach(), lp.class_dim
        state = self.optimizer.state.get(lp.param, {})
        if "first_grad" in snap:
            # SGD's buffer of a row moving for the first time is its gradient, not
            # momentum * buffer + (1 - dampening) * gradient: redo those rows as torch does.
            new, buf = _fresh.sgd_first_step(group, snap["param"], snap["first_grad"])
            rows = lp.per_class(snap["fresh"])
            torch.where(rows, new, p, out=p)
            torch.where(rows, buf, state["momentum_buffer"], out=state["momentum_buffer"])
        if "grad" in snap:
            grad = lp.param.grad
            assert grad is not None
            grad.copy_(snap["grad"])
        keep = None if moving is None else lp.per_class(moving)
        if "param" in snap:
            old: Tensor = snap["param"]
            if self._weight_decay is not None and decay_kind(self.optimizer, group) == "decoupled":
                # The optimizer decayed by lr * wd_group; make it lr * wd[c].
                extra = self._weight_decay.to(p.dtype) - float(group.get("weight_decay", 0.0))
                p.addcmul_(old, lp.per_class(extra) * group["lr"], value=-1.0)
            if self._lr_scale is not None:
                # The update is linear in lr: old + s * (new - old) is the step with lr * s.
                torch.lerp(old, p, lp.per_class(self._lr_scale.to(p.dtype)), out=p)
            if keep is not None:
                torch.where(keep, p, old, out=p)
        elif "param_rows" in snap:
            p.index_copy_(dim, self._frozen_index, snap["param_rows"])
        self._restore_state(lp, group, state, snap, keep)

    def _restore_state(
        self,
        lp: LabelParam,
        group: dict[str, Any],
        state: dict[str, Any],
        snap: dict[str, Any],
        keep: Tensor | None,
    ) -> None:
        p, dim = lp.param, lp.class_dim
        for k, v in self._row_state(p, state).items():
            if "state" in snap:
                assert keep is not None
                before = snap["state"].get(k)
            elif "state_rows" in snap:
                before = snap["state_rows"].get(k)
            else:
                continue
            if before is None and k not in snap["keys"]:
                # Created by this step: the rows that sat it out hold the initial value (for
                # SGD's buffer, any value: their first step replaces it).
                init = _fresh.initial_value(self.optimizer, group, k)
                before = _value(0.0 if init is None else init, v)
            if before is None:
                continue
            if "state" in snap:
                assert keep is not None
                torch.where(keep, v, before, out=v)
            elif before.dim() == 0:
                v.index_fill_(dim, self._frozen_index, before)
            else:
                v.index_copy_(dim, self._frozen_index, before)

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, plus the rules and the present-class window under
        the key ``"row_rules"``."""
        sd = dict(self.optimizer.state_dict())
        sd["row_rules"] = {
            "optimizer": type(self.optimizer).__name__,
            "num_classes": self.num_classes,
            "frozen": self._frozen.cpu(),
            "lr_scale": None if self._lr_scale is None else self._lr_scale.cpu(),
            "weight_decay": None if self._weight_decay is None else self._weight_decay.cpu(),
            "skip_absent": self.skip_absent,
            "present": self._present.cpu(),
            "observed": self._observed,
            "started": torch.stack(self._started).cpu(),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (or a plain optimizer state dict).

        Every field of the rules is checked (type, shape, range) before anything is loaded.

        Raises:
            ValueError: the state dict was saved from a RowRules around another optimizer type,
                for another number of classes or label-owned parameters, or a field is malformed.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        sd = dict(state_dict)
        rules = sd.pop("row_rules", None)
        if rules is None:
            self.optimizer.load_state_dict(sd)
            # A plain optimizer's state: every row of a tensor with state has moved.
            has_state = [bool(self.optimizer.state.get(lp.param)) for lp in self._params]
            self._share_started(has_state)
            self._all_started = has_state
            return
        r = checked_rules_state(
            rules,
            optimizer=type(self.optimizer).__name__,
            num_classes=self.num_classes,
            num_params=len(self._params),
        )
        self.optimizer.load_state_dict(sd)
        self._set_frozen(r["frozen"])
        self._lr_scale = _on(r["lr_scale"], self._device)
        self._weight_decay = _on(r["weight_decay"], self._device)
        self.skip_absent = r["skip_absent"]
        self._present = r["present"].to(self._device).clone()
        self._observed = r["observed"]
        started = r["started"]
        rows: list[Any] = []
        for i, lp in enumerate(self._params):
            if started is None:  # saved before 0.2: rows of a tensor with state have moved
                rows.append(bool(self.optimizer.state.get(lp.param)))
            else:
                rows.append(started[i])
        self._share_started(rows)
        self._all_started = [bool(torch.as_tensor(row).all()) for row in rows]


def _value(init: float | Tensor, like: Tensor) -> Tensor:
    """``init`` as a 0-d tensor of ``like``'s dtype (on its device, or a CPU scalar)."""
    if isinstance(init, Tensor):
        return init.to(like.dtype)
    return torch.tensor(init, dtype=like.dtype)


def _on(values: Tensor | None, device: torch.device) -> Tensor | None:
    return None if values is None else values.to(device, torch.float64)
