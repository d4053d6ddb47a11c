"""SGD: what labelgrad knows about it, its fresh-row rule and its fast kernel on label-owned rows.

A row that sits out the step in which the momentum buffer is created must later start as a new
parameter would: the buffer does not exist before a parameter's first step, and that step sets
it to the gradient, without dampening (:func:`sgd_first_step`). The kernel applies momentum,
dampening, Nesterov and maximize with per-row factors in about one pass per state tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim.sgd import sgd

from labelgrad.rows.families.family import (
    Family,
    FreshRule,
    gather_rows,
    moving_rows,
    plain_dense,
)
from labelgrad.rows.label_param import LabelParam

__all__ = ["FAMILIES", "SGDKernel", "SGDRows", "sgd_first_step", "sgd_rows", "sgd_step"]


def _initial(group: dict[str, Any], key: str) -> float | Tensor | None:
    # The momentum buffer is created from the first gradient (see sgd_first_step).
    return None if key == "momentum_buffer" else 0.0


def _with_momentum(group: dict[str, Any]) -> bool:
    return bool(group["momentum"] != 0)


@dataclass
class SGDRows:
    """The per-row factors of one SGD step for the tensors of one group and dtype."""

    moving: Tensor | None  # bool: rows that move
    row_lr: Tensor | None  # lr_scale[c] for moving rows, 0 for resting ones
    keep: Tensor | None  # buffer factor: momentum (moved before), 0 (first move), 1 (resting)
    damp: Tensor | None  # gradient factor: 1 - dampening, 1 (first move), 0 (resting)
    # The gathered path (see moving_rows): the moving rows, lr_scale and fresh mask there.
    index: Tensor | None = None
    index_lr: Tensor | None = None
    index_fresh: Tensor | None = None
    # The masked factors above, built on demand where the gathered path cannot serve a tensor.
    masked: Callable[[], SGDRows] | None = field(default=None, repr=False)


def sgd_rows(
    group: dict[str, Any],
    dtype: torch.dtype,
    moving: Tensor | None,
    lr_scale: Tensor | None,
    fresh: Tensor | None = None,
    *,
    gather: bool = True,
) -> SGDRows:
    """The factors of :func:`sgd_step` (``lr_scale`` already in ``dtype``); with ``gather``, the
    indices of the moving rows where :func:`moving_rows` finds gathering them cheaper."""
    index = moving_rows(moving) if gather and moving is not None else None
    if index is not None:
        return SGDRows(
            moving,
            None,
            None,
            None,
            index,
            None if lr_scale is None else lr_scale.index_select(0, index),
            None if fresh is None else fresh.index_select(0, index),
            masked=lambda: sgd_rows(group, dtype, moving, lr_scale, fresh, gather=False),
        )
    row_lr = lr_scale
    if moving is not None:
        move_f = moving.to(dtype)
        row_lr = move_f if lr_scale is None else lr_scale * move_f
    keep = damp = None
    mask = moving if moving is not None else fresh
    if group["momentum"] != 0 and mask is not None:
        keep = torch.full(mask.shape, group["momentum"], dtype=dtype, device=mask.device)
        damp = torch.full_like(keep, 1 - group["dampening"])
        if fresh is not None:
            keep = keep.masked_fill(fresh, 0.0)
            damp = damp.masked_fill(fresh, 1.0)
        if moving is not None:
            resting = ~moving
            keep = keep.masked_fill(resting, 1.0)
            damp = damp.masked_fill(resting, 0.0)
    return SGDRows(moving, row_lr, keep, damp)


def sgd_step(
    group: dict[str, Any],
    state: dict[str, Any],
    lp: LabelParam,
    rows_: SGDRows,
    *,
    weight_decay: Tensor | None,
    lr_scale: Tensor | None,
) -> None:
    """One SGD step (momentum, dampening, Nesterov, maximize) of ``lp.param`` with per-row
    factors, in about one pass per state tensor.

    ``row_lr`` is ``lr_scale[c]`` for moving rows and 0 for resting ones (None: 1 everywhere).
    A resting row sees a zero gradient, keeps its buffer (factor 1) and moves by ``0 * update``;
    a row moving for the first time (``fresh``, or every row when the buffer does not exist
    yet) gets the buffer torch gives a new parameter: its gradient, without dampening.
    """
    param = lp.param.detach()
    grad = lp.param.grad
    assert grad is not None
    if rows_.index is not None:
        if getattr(param, "device_mesh", None) is None:
            _gathered_step(group, state, param, grad, lp.class_dim, rows_, weight_decay)
            return
        assert rows_.masked is not None  # a sharded (DTensor) parameter: masked on every row
        rows_ = rows_.masked()
    _update(group, state, param, grad, lp, rows_, weight_decay=weight_decay, lr_scale=lr_scale)


def _gathered_step(
    group: dict[str, Any],
    state: dict[str, Any],
    param: Tensor,
    grad: Tensor,
    dim: int,
    rows_: SGDRows,
    weight_decay: Tensor | None,
) -> None:
    """The step on the moving rows alone: gather them, apply SGD's update, scatter them back;
    resting rows and their buffer are never read or written."""
    index = rows_.index
    assert index is not None
    fresh = rows_.index_fresh
    with_buffer = group["momentum"] != 0
    if with_buffer and state.get("momentum_buffer") is None:
        # A new buffer (zeros for the rows that rest); every moving row makes its first move.
        state["momentum_buffer"] = torch.zeros_like(param)
        fresh = torch.ones(index.shape, dtype=torch.bool, device=index.device)
    if index.numel() == 0:
        return
    sub_param = gather_rows(param, dim, index)
    sub_state = {}
    if with_buffer:
        sub_state["momentum_buffer"] = gather_rows(state["momentum_buffer"], dim, index)
    sub_rows = sgd_rows(group, param.dtype, None, rows_.index_lr, fresh, gather=False)
    sub_wd = None if weight_decay is None else weight_decay.index_select(0, index)
    sub_lp = LabelParam(sub_param, dim)
    _update(
        group,
        sub_state,
        sub_param,
        gather_rows(grad, dim, index),
        sub_lp,
        sub_rows,
        weight_decay=sub_wd,
        lr_scale=rows_.index_lr,
    )
    param.index_copy_(dim, index, sub_param)
    if with_buffer:
        state["momentum_buffer"].index_copy_(dim, index, sub_state["momentum_buffer"])


def _update(
    group: dict[str, Any],
    state: dict[str, Any],
    param: Tensor,
    grad: Tensor,
    lp: LabelParam,
    rows_: SGDRows,
    *,
    weight_decay: Tensor | None,
    lr_scale: Tensor | None,
) -> None:
    """SGD's update of ``param`` (``lp``'s rows) and its buffer in ``state``, per-row factors."""
    rows = lp.per_class
    lr, momentum = group["lr"], group["momentum"]
    g = -grad if group["maximize"] else grad
    if weight_decay is not None:
        g = g.addcmul(param, rows(weight_decay.to(param.dtype)))
    elif group["weight_decay"] != 0:
        g = g.add(param, alpha=group["weight_decay"])
    if rows_.moving is not None:
        g = torch.where(rows(rows_.moving), g, 0.0)
    update = g
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            # A new buffer: every row's first move (zeros, then factor 0 on them).
            buf = state["momentum_buffer"] = torch.zeros_like(param)
            every = torch.ones(param.shape[lp.class_dim], dtype=torch.bool, device=param.device)
            rows_ = sgd_rows(group, param.dtype, rows_.moving, lr_scale, fresh=every, gather=False)
        if rows_.keep is None or rows_.damp is None:
            buf.mul_(momentum).add_(g, alpha=1 - group["dampening"])
        else:
            buf.mul_(rows(rows_.keep)).addcmul_(g, rows(rows_.damp))
        update = g.add(buf, alpha=momentum) if group["nesterov"] else buf
    if rows_.row_lr is None:
        param.add_(update, alpha=-lr)
    else:
        param.addcmul_(update, rows(rows_.row_lr * -lr))


def sgd_first_step(
    group: dict[str, Any], param: Tensor, grad: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """The parameter and momentum buffer after SGD's first step of a new parameter ``param``
    (a copy; ``param`` is not modified), computed by torch's own SGD with the group's settings."""
    out = param.clone()
    buffers: list[Tensor | None] = [None]
    sgd(
        [out],
        [grad],
        buffers,
        has_sparse_grad=grad.is_sparse,
        foreach=group.get("foreach"),
        fused=group.get("fused"),
        weight_decay=group["weight_decay"],
        momentum=group["momentum"],
        lr=group["lr"],
        dampening=group["dampening"],
        nesterov=group["nesterov"],
        maximize=group["maximize"],
    )
    buf = buffers[0]
    assert buf is not None
    return out, {"momentum_buffer": buf}


class SGDKernel:
    """The fast kernel of SGD (see :class:`labelgrad.rows.families.FastKernel`)."""

    def supports(self, group: dict[str, Any], param: Tensor) -> bool:
        """Any dense real parameter outside capturable/differentiable groups."""
        return plain_dense(group, param)

    def coefficients(
        self,
        group: dict[str, Any],
        dtype: torch.dtype,
        moving: Tensor | None,
        lr_scale: Tensor | None,
        fresh: Tensor | None,
    ) -> SGDRows:
        """See :func:`sgd_rows`."""
        return sgd_rows(group, dtype, moving, lr_scale, fresh)

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        group: dict[str, Any],
        lp: LabelParam,
        coef: SGDRows,
        *,
        weight_decay: Tensor | None,
        lr_scale: Tensor | None,
    ) -> None:
        """See :func:`sgd_step`."""
        sgd_step(
            group,
            optimizer.state[lp.param],
            lp,
            coef,
            weight_decay=weight_decay,
            lr_scale=lr_scale,
        )


FAMILIES: dict[type[torch.optim.Optimizer], Family] = {
    torch.optim.SGD: Family(
        decay="coupled",
        linear_in_lr=True,
        initial_state=_initial,
        fresh=FreshRule(applies=_with_momentum, first_step=sgd_first_step),
        fast=SGDKernel(),
    ),
}
