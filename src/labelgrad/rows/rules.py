"""Per-class update rules for label-owned parameters, acting on the optimizer's update."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from labelgrad._distributed import CheckedReducer
from labelgrad.rows import _fast
from labelgrad.rows._families import LR_LINEAR, decay_kind
from labelgrad.rows._spec import LabelParam, RowsLike, class_mask, class_values, parse_rows
from labelgrad.targets import Encoding, Targets, TargetsLike

__all__ = ["RowRules", "present_classes"]


def present_classes(
    targets: TargetsLike,
    num_classes: int,
    *,
    class_dim: int = 1,
    encoding: Encoding | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """The (C,) bool mask of classes with a positive label anywhere in ``targets``.

    Computed on the targets' device without a host synchronisation. ``class_dim``,
    ``encoding`` and ``ignore_index`` are passed on to :meth:`labelgrad.Targets.coerce`.

    Example:
        >>> import torch
        >>> present_classes(torch.tensor([2, 0, 2, -100]), 4).tolist()
        [True, False, True, False]
        >>> present_classes(torch.tensor([[1, 255], [1, 1]]), 4, ignore_index=255).tolist()
        [False, True, False, False]
    """
    t = Targets.coerce(
        targets,
        num_classes=num_classes,
        class_dim=class_dim,
        encoding=encoding,
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

    Adam and AdamW are stepped by labelgrad itself on label-owned parameters (the same update
    with per-row coefficients, one extra pass over the gradient); every other optimizer,
    foreach and fused variants included, goes through the exact snapshot path: copy the affected
    rows of the parameter and of every state tensor shaped like it, let the optimizer step,
    restore and rescale. ``lr_scale`` is exact for optimizers whose update is linear in ``lr``
    (SGD, Adam, AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad, Adadelta); per-class
    ``weight_decay`` is supported for optimizers with L2 (coupled) or decoupled (AdamW-style)
    weight decay.

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
        fast: step Adam/AdamW label-owned rows with labelgrad's own kernel (False forces the
            generic snapshot path).

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
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, RowRules):
            raise TypeError("optimizer is already a RowRules; put all rows in one RowRules")
        if not isinstance(skip_absent, bool):
            raise TypeError(f"skip_absent must be a bool, got {type(skip_absent).__name__}")
        self.optimizer = optimizer
        self._params, self.num_classes = parse_rows(rows, num_classes)
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for lp in self._params:
            if id(lp.param) not in owned:
                raise ValueError(
                    f"rows: a parameter of shape {tuple(lp.param.shape)} is not in the "
                    "optimizer's param_groups"
                )
        devices = {lp.param.device for lp in self._params}
        if len(devices) != 1:
            raise ValueError(f"rows: label-owned parameters must share one device, got {devices}")
        self._device = devices.pop()
        self.skip_absent = skip_absent
        self.fast = bool(fast)
        c = self.num_classes
        self._frozen = class_mask(frozen, "frozen", c).to(self._device)
        self._frozen_index = self._frozen.nonzero().flatten()
        self._lr_scale = _on(class_values(lr_scale, "lr_scale", c), self._device)
        self._weight_decay = _on(class_values(weight_decay, "weight_decay", c), self._device)
        if self._lr_scale is not None and not isinstance(optimizer, LR_LINEAR):
            warnings.warn(
                f"lr_scale scales the update of {type(optimizer).__name__}; that equals a "
                "smaller learning rate only for optimizers whose update is linear in lr",
                stacklevel=2,
            )
        if self._weight_decay is not None:
            for lp in self._params:
                if decay_kind(optimizer, self._group_of(lp.param)) is None:
                    raise TypeError(
                        f"weight_decay: per-class weight decay is not supported for "
                        f"{type(optimizer).__name__} (known: optimizers with L2 or decoupled "
                        "weight decay such as SGD, Adam, AdamW, RMSprop, Adagrad)"
                    )
        self._present = torch.zeros(c, dtype=torch.bool, device=self._device)
        self._present_reducer = CheckedReducer("the present classes of RowRules")
        self._observed = False
        self._in_closure = False

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
        ignore_index: int = -100,
    ) -> None:
        """Add the classes with a positive label in ``targets`` to the classes present this step.

        Call it for every micro-batch of a gradient-accumulation window; the window closes at
        :meth:`step`. Any label encoding is accepted (see :meth:`labelgrad.Targets.coerce`;
        ``class_dim``, ``encoding`` and ``ignore_index`` are passed on to it).

        Example:
            >>> import torch, labelgrad as lg
            >>> head = torch.nn.Linear(2, 3)
            >>> opt = lg.RowRules(torch.optim.SGD(head.parameters(), lr=0.1), rows=head,
            ...                   skip_absent=True)
            >>> opt.observe(torch.tensor([0])); opt.observe(torch.tensor([2]))
            >>> opt.present.tolist()
            [True, False, True]
        """
        hit = present_classes(
            targets,
            self.num_classes,
            class_dim=class_dim,
            encoding=encoding,
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
    ) -> Any:
        """Step the wrapped optimizer with the row rules applied.

        Args:
            closure: re-evaluates the model and returns the loss; called once, before the
                update (optimizers that call it several times, such as LBFGS, are not supported).
            targets: the batch's labels; same as calling :meth:`observe` first.

        Returns:
            The closure's loss, or None.

        Raises:
            RuntimeError: ``skip_absent=True`` and no targets were observed since the last step.
        """
        if targets is not None:
            self.observe(targets)
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
        active = [lp for lp in self._params if lp.param.grad is not None]
        groups = {id(lp.param): self._group_of(lp.param) for lp in active}
        fast = [
            lp
            for lp in active
            if self.fast and _fast.supports(self.optimizer, groups[id(lp.param)], lp.param)
        ]
        fast_ids = {id(lp.param) for lp in fast}
        slow = [lp for lp in active if id(lp.param) not in fast_ids]
        # Snapshot path: take the affected rows before the optimizer moves them.
        snaps = [self._snapshot(lp, groups[id(lp.param)], moving) for lp in slow]
        # Fast path: hide the label-owned gradients from the optimizer, step them ourselves.
        hidden = [lp.param.grad for lp in fast]
        for lp in fast:
            lp.param.grad = None
        try:
            self.optimizer.step()
        finally:
            for lp, g in zip(fast, hidden):
                lp.param.grad = g
        for lp, snap in zip(slow, snaps):
            self._restore(lp, groups[id(lp.param)], moving, snap)
        for lp in fast:
            _fast.adam_step(
                self.optimizer,
                groups[id(lp.param)],
                lp,
                moving=moving,
                lr_scale=self._lr_scale,
                weight_decay=self._weight_decay,
            )

    def _snapshot(
        self, lp: LabelParam, group: dict[str, Any], moving: Tensor | None
    ) -> dict[str, Any]:
        p, dim = lp.param, lp.class_dim
        snap: dict[str, Any] = {}
        # A DTensor (FSDP2) parameter cannot be indexed by class across its shards: take the
        # whole-tensor path, which selects rows with a broadcast mask (see LabelParam.per_class).
        dynamic = self.skip_absent or hasattr(p, "device_mesh")
        needs_param = dynamic or self._lr_scale is not None
        kind = decay_kind(self.optimizer, group) if self._weight_decay is not None else None
        if kind == "decoupled":
            needs_param = True
        if needs_param:
            snap["param"] = p.detach().clone()
        elif moving is not None:
            snap["param_rows"] = p.detach().index_select(dim, self._frozen_index)
        state = self.optimizer.state.get(p, {})
        if moving is not None:
            like = {k: v for k, v in state.items() if isinstance(v, Tensor) and v.shape == p.shape}
            if dynamic:
                snap["state"] = {k: v.clone() for k, v in like.items()}
            else:
                snap["state_rows"] = {
                    k: v.index_select(dim, self._frozen_index) for k, v in like.items()
                }
        if kind == "coupled":
            assert self._weight_decay is not None
            grad = p.grad
            assert grad is not None
            snap["grad"] = grad.clone()
            extra = self._weight_decay.to(p.dtype) - float(group.get("weight_decay", 0.0))
            sign = -1.0 if group.get("maximize", False) else 1.0
            grad.addcmul_(p.detach(), lp.per_class(extra), value=sign)
        return snap

    def _restore(
        self, lp: LabelParam, group: dict[str, Any], moving: Tensor | None, snap: dict[str, Any]
    ) -> None:
        p, dim = lp.param.detach(), lp.class_dim
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
        state = self.optimizer.state.get(lp.param, {})
        if "state" in snap:
            assert keep is not None
            old_state: dict[str, Tensor] = snap["state"]
            for k, v in state.items():
                if isinstance(v, Tensor) and v.shape == p.shape:
                    # State created by this step starts at zero for rows that did not move.
                    before = old_state.get(k)
                    if before is None:
                        before = torch.zeros((), dtype=v.dtype, device=v.device)
                    torch.where(keep, v, before, out=v)
        elif "state_rows" in snap:
            old_rows: dict[str, Tensor] = snap["state_rows"]
            for k, v in state.items():
                if isinstance(v, Tensor) and v.shape == p.shape:
                    before = old_rows.get(k)
                    if before is None:
                        v.index_fill_(dim, self._frozen_index, 0.0)
                    else:
                        v.index_copy_(dim, self._frozen_index, before)

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, plus the rules and the present-class window under
        the key ``"row_rules"``."""
        sd = dict(self.optimizer.state_dict())
        sd["row_rules"] = {
            "num_classes": self.num_classes,
            "frozen": self._frozen.cpu(),
            "lr_scale": None if self._lr_scale is None else self._lr_scale.cpu(),
            "weight_decay": None if self._weight_decay is None else self._weight_decay.cpu(),
            "skip_absent": self.skip_absent,
            "present": self._present.cpu(),
            "observed": self._observed,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (or a plain optimizer state dict)."""
        sd = dict(state_dict)
        rules = sd.pop("row_rules", None)
        if rules is not None:
            if rules["num_classes"] != self.num_classes:
                raise ValueError(
                    f"state_dict: saved for num_classes={rules['num_classes']}, this RowRules "
                    f"has num_classes={self.num_classes}"
                )
            self._set_frozen(rules["frozen"].to(torch.bool).cpu())
            self._lr_scale = _on(rules["lr_scale"], self._device)
            self._weight_decay = _on(rules["weight_decay"], self._device)
            self.skip_absent = bool(rules["skip_absent"])
            self._present = rules["present"].to(self._device, torch.bool).clone()
            self._observed = bool(rules["observed"])
        self.optimizer.load_state_dict(sd)


def _on(values: Tensor | None, device: torch.device) -> Tensor | None:
    return None if values is None else values.to(device, torch.float64)
