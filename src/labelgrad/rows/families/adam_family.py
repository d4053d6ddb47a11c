"""Adam and AdamW: what labelgrad knows about them, and their fast kernel on label-owned rows.

The snapshot path copies the parameter and its two moment tensors every step; for the most common
optimizers that is most of the cost. Here the update is applied directly with a per-row learning
rate, decay and moment coefficients that are exactly 0 (or 1) for rows that do not move, so that
those rows and their moments keep their bits, at about the cost of the optimizer itself. The state
layout is torch's (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so checkpoints move
freely between this path, the snapshot path and a plain optimizer. Adam's initial state is zeros,
which resting rows keep: no fresh-row rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from labelgrad.rows.families.family import Family, gather_rows, moving_rows, plain_dense, scalar
from labelgrad.rows.label_param import LabelParam

__all__ = ["FAMILIES", "AdamKernel", "RowCoefficients", "adam_step", "coefficients"]


def _init_state(group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
    # Same layout and dtypes as torch.optim.Adam._init_group.
    if group.get("fused", False):
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
    else:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    if group["amsgrad"]:
        state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


@dataclass
class RowCoefficients:
    """The per-row factors of one step, computed once for every label-owned tensor of one dtype
    (a head's weight and bias share them): (C,) vectors, or None where a rule is absent."""

    moving: Tensor | None  # bool: rows that move
    row_lr: Tensor | None  # lr_scale[c] for moving rows, 0 for resting ones
    keep1: Tensor | None  # 1 - beta1 for moving rows, 0 for resting ones (lerp weight)
    beta2: Tensor | None  # beta2 for moving rows, 1 for resting ones
    # The gathered path (see moving_rows): the indices of the moving rows and lr_scale there.
    index: Tensor | None = None
    index_lr: Tensor | None = None
    # The masked factors above, built on demand where the gathered path cannot serve a tensor.
    masked: Callable[[], RowCoefficients] | None = field(default=None, repr=False)
    # Per-row factors of this step that the tensors sharing these coefficients (a head's weight
    # and bias) would otherwise each compute: keyed by the Python floats they depend on.
    shared: dict[tuple[object, ...], Tensor] = field(default_factory=dict, repr=False)


def _once(
    shared: dict[tuple[object, ...], Tensor], key: tuple[object, ...], make: Callable[[], Tensor]
) -> Tensor:
    if key not in shared:
        shared[key] = make()
    return shared[key]


def coefficients(
    group: dict[str, Any],
    dtype: torch.dtype,
    moving: Tensor | None,
    lr_scale: Tensor | None,
    *,
    gather: bool = True,
) -> RowCoefficients:
    """The per-row factors of Adam/AdamW for ``group`` in ``dtype`` (``lr_scale`` already in
    that dtype); with ``gather``, the indices of the moving rows where :func:`moving_rows`
    finds gathering them cheaper than masking the whole tensor."""
    beta1, beta2 = group["betas"]
    if moving is None:
        return RowCoefficients(None, lr_scale, None, None)
    index = moving_rows(moving) if gather else None
    if index is not None:
        index_lr = None if lr_scale is None else lr_scale.index_select(0, index)
        return RowCoefficients(
            moving,
            None,
            None,
            None,
            index,
            index_lr,
            masked=lambda: coefficients(group, dtype, moving, lr_scale, gather=False),
        )
    move_f = moving.to(dtype)
    row_lr = move_f if lr_scale is None else lr_scale * move_f
    # beta2 as a 0-d tensor of ``dtype``: a Python float would make the result float32 and
    # round beta2 there (a float64 second moment would then drift from torch's own).
    beta2_rows = torch.where(moving, torch.tensor(beta2, dtype=dtype), 1.0)
    return RowCoefficients(moving, row_lr, move_f * (1 - beta1), beta2_rows)


def _adam_grad(
    grad: Tensor,
    param: Tensor,
    group: dict[str, Any],
    lp: LabelParam,
    coef: RowCoefficients,
    wd: Tensor | float,
    decoupled: bool,
) -> Tensor:
    """The gradient Adam's moments see: maximize, L2 decay, and zero in resting rows."""
    rows = lp.per_class
    g = -grad if group["maximize"] else grad
    if not decoupled and (isinstance(wd, Tensor) or wd != 0):
        g = g.addcmul(param, rows(wd)) if isinstance(wd, Tensor) else g.add(param, alpha=wd)
    if coef.moving is not None:
        # Rows that do not move see a zero gradient, so their moments keep their bits
        # (even where the gradient is not finite).
        g = torch.where(rows(coef.moving), g, 0.0)
    return g


def _update_moments(
    state: dict[str, Any],
    g: Tensor,
    group: dict[str, Any],
    lp: LabelParam,
    coef: RowCoefficients,
) -> Tensor:
    """Update ``exp_avg`` and ``exp_avg_sq`` in place; return the second moment the step uses."""
    rows = lp.per_class
    beta1, beta2 = group["betas"]
    exp_avg: Tensor = state["exp_avg"]
    exp_avg_sq: Tensor = state["exp_avg_sq"]
    if coef.keep1 is None or coef.beta2 is None:
        exp_avg.lerp_(g, 1 - beta1)
        # beta2 as a 0-d tensor of the moments' dtype: the same value a Python float becomes,
        # without the scalar's conversion operators.
        exp_avg_sq.mul_(scalar(beta2, exp_avg_sq)).addcmul_(g, g, value=1 - beta2)
    else:
        exp_avg.lerp_(g, rows(coef.keep1))
        exp_avg_sq.mul_(rows(coef.beta2)).addcmul_(g, g, value=1 - beta2)
    if group["amsgrad"]:
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        return state["max_exp_avg_sq"]  # type: ignore[no-any-return]
    return exp_avg_sq


def _bias_corrections(
    group: dict[str, Any], step_t: Tensor
) -> tuple[Tensor | float, Tensor | float]:
    """Adam's ``1 - beta1**step`` and ``sqrt(1 - beta2**step)``, computed as torch does."""
    beta1, beta2 = group["betas"]
    if group.get("fused") or step_t.device.type != "cpu":
        # Tensor math in float64 (the values torch computes in Python floats), never .item():
        # no host read when the step counter lives with the parameters (fused).
        step = step_t.to(torch.float64)
        return 1 - beta1**step, (1 - beta2**step) ** 0.5
    # A CPU step counter is read as torch's own Adam reads it: a Python float, no sync.
    step_f = float(step_t)
    return 1 - beta1**step_f, (1 - beta2**step_f) ** 0.5


def _decoupled_decay(
    param: Tensor,
    lp: LabelParam,
    row_lr: Tensor | None,
    wd: Tensor | float,
    lr: float,
    shared: dict[tuple[object, ...], Tensor],
) -> None:
    """AdamW's decay ``param *= 1 - lr * row_lr * wd``, per row where either is per row."""
    rows = lp.per_class
    if row_lr is None:
        if isinstance(wd, Tensor):
            param.mul_(rows(1 - lr * wd))
        elif wd != 0:
            param.mul_(scalar(1 - lr * wd, param))
    elif isinstance(wd, Tensor):
        param.mul_(rows(1 - lr * row_lr * wd))
    elif wd != 0:
        r = row_lr
        param.mul_(rows(_once(shared, ("decay", lr, wd), lambda: r * (-lr * wd) + 1)))


def _apply_update(
    param: Tensor,
    exp_avg: Tensor,
    second: Tensor,
    group: dict[str, Any],
    lp: LabelParam,
    coef: RowCoefficients,
    corrections: tuple[Tensor | float, Tensor | float],
    shared: dict[tuple[object, ...], Tensor],
) -> None:
    """``param -= lr * row_lr * m_hat / (sqrt(v_hat) + eps)``, exactly 0 in resting rows."""
    rows = lp.per_class
    row_lr = coef.row_lr
    lr, eps = group["lr"], group["eps"]
    bias_correction1, bias_correction2_sqrt = corrections
    if row_lr is None:
        denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    elif eps > 0:
        # m / (sqrt(v) / b2 + eps) * k  ==  m / ((sqrt(v) + eps * b2) / (k * b2)): one fused
        # addcdiv as in torch. A resting row has k = 0, so its denominator is inf and its update
        # exactly 0 (the moments of a resting row are finite: it saw a zero gradient).
        # (C,) times a 0-d float64: computed in row_lr's dtype, no separate conversion.
        factor = (-lr / bias_correction1) * bias_correction2_sqrt
        if isinstance(factor, float):
            k = rows(_once(shared, ("k", factor), lambda: row_lr * factor))
        else:  # a tensor: the step counter lives on the device (nothing to share by value)
            k = rows(row_lr * factor)
        denom = second.sqrt().add_(eps * bias_correction2_sqrt).div_(k)
        param.addcdiv_(exp_avg, denom)
    else:
        denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
        update = torch.where(
            rows(coef.moving if coef.moving is not None else row_lr != 0), exp_avg / denom, 0.0
        )  # 0/0 in a resting row
        param.addcmul_(update, rows(row_lr * (-lr / bias_correction1)))


def adam_step(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    lp: LabelParam,
    coef: RowCoefficients,
    *,
    weight_decay: Tensor | None,
) -> None:
    """One Adam/AdamW step of ``lp.param`` with per-row lr scale, weight decay and freezing."""
    param = lp.param.detach()
    grad = lp.param.grad
    assert grad is not None
    state = optimizer.state[lp.param]
    if "step" not in state:
        _init_state(group, param, state)
    step_t: Tensor = state["step"]
    step_t.add_(scalar(1.0, step_t))
    decoupled = isinstance(optimizer, torch.optim.AdamW) or group.get(
        "decoupled_weight_decay", False
    )
    wd: Tensor | float = (
        weight_decay.to(param.dtype) if weight_decay is not None else float(group["weight_decay"])
    )
    if coef.index is not None:
        if getattr(param, "device_mesh", None) is None:
            _gathered_step(param, grad, state, group, lp, coef, wd, decoupled, step_t)
            return
        assert coef.masked is not None  # a sharded (DTensor) parameter: masked on every row
        coef = coef.masked()
    g = _adam_grad(grad, param, group, lp, coef, wd, decoupled)
    second = _update_moments(state, g, group, lp, coef)
    corrections = _bias_corrections(group, step_t)
    if decoupled:
        _decoupled_decay(param, lp, coef.row_lr, wd, group["lr"], coef.shared)
    _apply_update(param, state["exp_avg"], second, group, lp, coef, corrections, coef.shared)


def _gathered_step(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    group: dict[str, Any],
    lp: LabelParam,
    coef: RowCoefficients,
    wd: Tensor | float,
    decoupled: bool,
    step_t: Tensor,
) -> None:
    """The step on the moving rows alone: gather them, apply Adam's update (every gathered row
    moves), scatter them back. Resting rows are never read or written, so they and their state
    keep their bits, and their never-touched zero moments cost nothing (``sqrt(0)`` is several
    times slower than ``sqrt`` of positive numbers on some CPUs)."""
    index = coef.index
    assert index is not None
    if index.numel() == 0:
        return
    dim = lp.class_dim
    keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
    sub = {key: gather_rows(state[key], dim, index) for key in keys}
    sub_lp = LabelParam(gather_rows(param, dim, index), dim)
    sub_coef = RowCoefficients(None, coef.index_lr, None, None)
    sub_wd = wd.index_select(0, index) if isinstance(wd, Tensor) else wd
    g = _adam_grad(
        gather_rows(grad, dim, index), sub_lp.param, group, sub_lp, sub_coef, sub_wd, decoupled
    )
    second = _update_moments(sub, g, group, sub_lp, sub_coef)
    corrections = _bias_corrections(group, step_t)
    if decoupled:
        _decoupled_decay(sub_lp.param, sub_lp, sub_coef.row_lr, sub_wd, group["lr"], coef.shared)
    _apply_update(
        sub_lp.param, sub["exp_avg"], second, group, sub_lp, sub_coef, corrections, coef.shared
    )
    param.index_copy_(dim, index, sub_lp.param)
    for key in keys:
        state[key].index_copy_(dim, index, sub[key])


class AdamKernel:
    """The fast kernel of Adam and AdamW (see :class:`labelgrad.rows.families.FastKernel`)."""

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
    ) -> RowCoefficients:
        """See :func:`coefficients` (Adam has no fresh-row rule: ``fresh`` is unused)."""
        return coefficients(group, dtype, moving, lr_scale)

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        group: dict[str, Any],
        lp: LabelParam,
        coef: RowCoefficients,
        *,
        weight_decay: Tensor | None,
        lr_scale: Tensor | None,
    ) -> None:
        """See :func:`adam_step`."""
        adam_step(optimizer, group, lp, coef, weight_decay=weight_decay)


FAMILIES: dict[type[torch.optim.Optimizer], Family] = {
    torch.optim.Adam: Family(decay="coupled", linear_in_lr=True, fast=AdamKernel()),
    torch.optim.AdamW: Family(decay="decoupled", linear_in_lr=True, fast=AdamKernel()),
}
