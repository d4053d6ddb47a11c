"""The exact fallback for any optimizer: snapshot the affected rows, let it step, restore.

Before the wrapped optimizer steps, :func:`take` copies what a rule may have to put back (the
whole parameter and state where rows are selected at run time, only the frozen rows where they
are fixed) into a :class:`Snapshot`; after it, :func:`restore` puts resting rows and their state
back bitwise, rescales the update of moving rows by ``lr_scale`` (exact where the update is
linear in lr) and corrects the weight decay to each row's own. It works for foreach and fused
variants alike, at the cost of those copies.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from labelgrad.rows.families import Family, decay_kind
from labelgrad.rows.label_param import LabelParam

__all__ = ["Snapshot", "StepRules", "restore", "row_state", "take"]


@dataclass(frozen=True)
class StepRules:
    """The rules of one step, as the coordinator holds them (float64 (C,) vectors on the
    parameters' device, or None)."""

    optimizer: torch.optim.Optimizer
    family: Family
    frozen_index: Tensor  # int64 indices of the frozen classes
    lr_scale: Tensor | None
    weight_decay: Tensor | None
    dynamic: bool  # rows are chosen at run time (skip_absent, or a DTensor parameter)
    warned: set[str]  # state keys already named in a warning


@dataclass
class Snapshot:
    """What :func:`restore` needs of one label-owned parameter, taken before the step.

    Attributes:
        keys: the state keys that existed before the step.
        fresh: (C,) bool rows that move for the first time, or None.
        param: a copy of the whole parameter (rows chosen at run time, lr_scale, decoupled
            decay, or a fresh row's first step).
        param_rows: a copy of only the frozen rows (rows fixed at construction).
        state: copies of every state tensor shaped like the parameter (rows chosen at run time).
        state_rows: copies of only their frozen rows.
        grad: the gradient as the caller left it, where per-row L2 decay was added to it.
        first_grad: the gradient the optimizer sees, for a fresh row's first step.
    """

    keys: set[str]
    fresh: Tensor | None = None
    param: Tensor | None = None
    param_rows: Tensor | None = None
    state: dict[str, Tensor] | None = None
    state_rows: dict[str, Tensor] | None = None
    grad: Tensor | None = None
    first_grad: Tensor | None = None


def row_state(rules: StepRules, p: Tensor, state: dict[str, Any]) -> dict[str, Tensor]:
    """The state tensors shaped like ``p``; warns (once per key) about any other shape that a
    rule cannot protect row by row."""
    like: dict[str, Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, Tensor):
            continue
        if v.shape == p.shape:
            like[k] = v
        elif v.dim() > 0 and k not in rules.warned:
            rules.warned.add(k)
            warnings.warn(
                f"RowRules: the state {k!r} of shape {tuple(v.shape)} of "
                f"{type(rules.optimizer).__name__} is not shaped like its parameter "
                f"{tuple(p.shape)}; frozen and absent rows cannot protect it",
                stacklevel=5,
            )
    return like


def take(
    rules: StepRules,
    lp: LabelParam,
    group: dict[str, Any],
    moving: Tensor | None,
    fresh: Tensor | None,
) -> Snapshot:
    """Copy what the step may have to put back, and prepare the parameter's gradient and fresh
    rows for the optimizer's step."""
    p, dim = lp.param, lp.class_dim
    # A DTensor (FSDP2) parameter cannot be indexed by class across its shards: take the
    # whole-tensor path, which selects rows with a broadcast mask (see LabelParam.per_class).
    dynamic = rules.dynamic or hasattr(p, "device_mesh")
    kind = decay_kind(rules.optimizer, group) if rules.weight_decay is not None else None
    first_step = fresh is not None and rules.family.needs_first_step(group)
    state = rules.optimizer.state.get(p, {})
    like = row_state(rules, p, state)
    snap = Snapshot(keys=set(state), fresh=fresh)
    if dynamic or rules.lr_scale is not None or kind == "decoupled" or first_step:
        snap.param = p.detach().clone()
    elif moving is not None:
        snap.param_rows = p.detach().index_select(dim, rules.frozen_index)
    if moving is not None:
        if dynamic:
            snap.state = {k: v.clone() for k, v in like.items()}
        else:
            snap.state_rows = {k: v.index_select(dim, rules.frozen_index) for k, v in like.items()}
    if fresh is not None:
        _reset_fresh(rules, lp, group, like, fresh)
    grad = p.grad
    assert grad is not None
    if kind == "coupled":
        assert rules.weight_decay is not None
        snap.grad = grad.clone()
        extra = rules.weight_decay.to(p.dtype) - float(group.get("weight_decay", 0.0))
        sign = -1.0 if group.get("maximize", False) else 1.0
        grad.addcmul_(p.detach(), lp.per_class(extra), value=sign)
    if first_step:
        # The gradient as the optimizer sees it (foreach SGD may update it in place).
        snap.first_grad = grad.clone()
    return snap


def _reset_fresh(
    rules: StepRules,
    lp: LabelParam,
    group: dict[str, Any],
    like: dict[str, Tensor],
    fresh: Tensor,
) -> None:
    """Rows moving for the first time start from the state's initial value where that is
    not 0 (Rprop's step size is the current lr); zero-initialised state already holds it."""
    for k, v in like.items():
        init = rules.family.initial_state(group, k)
        if init is None or (isinstance(init, float) and init == 0.0):
            continue
        torch.where(lp.per_class(fresh), _value(init, v), v, out=v)


def restore(
    rules: StepRules,
    lp: LabelParam,
    group: dict[str, Any],
    moving: Tensor | None,
    snap: Snapshot,
) -> None:
    """After the optimizer's step: fresh rows' first step, the caller's gradient, rescaled
    and re-decayed moving rows, resting rows and their state put back bitwise."""
    p, dim = lp.param.detach(), lp.class_dim
    state = rules.optimizer.state.get(lp.param, {})
    first = rules.family.fresh.first_step if rules.family.fresh is not None else None
    if snap.first_grad is not None and snap.param is not None and first is not None:
        # A row's first step is not the recurrence on its initial state (SGD's buffer of a row
        # moving for the first time is its gradient): redo those rows as torch does.
        assert snap.fresh is not None
        new, new_state = first(group, snap.param, snap.first_grad)
        rows = lp.per_class(snap.fresh)
        torch.where(rows, new, p, out=p)
        for k, value in new_state.items():
            torch.where(rows, value, state[k], out=state[k])
    if snap.grad is not None:
        grad = lp.param.grad
        assert grad is not None
        grad.copy_(snap.grad)
    keep = None if moving is None else lp.per_class(moving)
    if snap.param is not None:
        old = snap.param
        if rules.weight_decay is not None and decay_kind(rules.optimizer, group) == "decoupled":
            # The optimizer decayed by lr * wd_group; make it lr * wd[c].
            extra = rules.weight_decay.to(p.dtype) - float(group.get("weight_decay", 0.0))
            p.addcmul_(old, lp.per_class(extra) * group["lr"], value=-1.0)
        if rules.lr_scale is not None:
            # The update is linear in lr: old + s * (new - old) is the step with lr * s.
            torch.lerp(old, p, lp.per_class(rules.lr_scale.to(p.dtype)), out=p)
        if keep is not None:
            torch.where(keep, p, old, out=p)
    elif snap.param_rows is not None:
        p.index_copy_(dim, rules.frozen_index, snap.param_rows)
    _restore_state(rules, lp, group, state, snap, keep)


def _restore_state(
    rules: StepRules,
    lp: LabelParam,
    group: dict[str, Any],
    state: dict[str, Any],
    snap: Snapshot,
    keep: Tensor | None,
) -> None:
    dim = lp.class_dim
    saved = snap.state if snap.state is not None else snap.state_rows
    if saved is None:
        return
    for k, v in row_state(rules, lp.param, state).items():
        before = saved.get(k)
        if before is None and k not in snap.keys:
            # Created by this step: the rows that sat it out hold the initial value (for
            # SGD's buffer, any value: their first step replaces it).
            init = rules.family.initial_state(group, k)
            before = _value(0.0 if init is None else init, v)
        if before is None:
            continue
        if snap.state is not None:
            assert keep is not None
            torch.where(keep, v, before, out=v)
        elif before.dim() == 0:
            v.index_fill_(dim, rules.frozen_index, before)
        else:
            v.index_copy_(dim, rules.frozen_index, before)


def _value(init: float | Tensor, like: Tensor) -> Tensor:
    """``init`` as a 0-d tensor of ``like``'s dtype (on its device, or a CPU scalar)."""
    if isinstance(init, Tensor):
        return init.to(like.dtype)
    return torch.tensor(init, dtype=like.dtype)
