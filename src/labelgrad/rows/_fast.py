"""Adam and AdamW on label-owned parameters, with per-row coefficients.

The snapshot path copies the parameter and its two moment tensors every step; for the most common
optimizers that is most of the cost. Here the update is applied directly with a per-row learning
rate, decay and moment coefficients that are exactly 0 (or 1) for rows that do not move, so that
those rows and their moments keep their bits, at about the cost of the optimizer itself. The state
layout is torch's (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so checkpoints move
freely between this path, the snapshot path and a plain optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.rows._spec import LabelParam

__all__ = ["adam_step", "supports"]


def supports(optimizer: torch.optim.Optimizer, group: dict[str, Any], param: Tensor) -> bool:
    """True where :func:`adam_step` reproduces ``optimizer`` on ``param``."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    grad = param.grad
    return not (
        group.get("capturable", False)
        or group.get("differentiable", False)
        or param.is_complex()
        or grad is None
        or grad.is_sparse
    )


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


def adam_step(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    lp: LabelParam,
    *,
    moving: Tensor | None,
    lr_scale: Tensor | None,
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
    exp_avg: Tensor = state["exp_avg"]
    exp_avg_sq: Tensor = state["exp_avg_sq"]
    step_t += 1

    beta1, beta2 = group["betas"]
    lr, eps = group["lr"], group["eps"]
    decoupled = isinstance(optimizer, torch.optim.AdamW) or group.get(
        "decoupled_weight_decay", False
    )
    dtype = param.dtype

    def rows(values: Tensor) -> Tensor:
        return lp.per_class(values.to(dtype))

    move_f = None if moving is None else moving.to(dtype)
    # Per-row learning rate: lr * lr_scale[c] for rows that move, 0 for those that do not.
    row_lr: Tensor | None = None
    if lr_scale is not None or move_f is not None:
        row_lr = torch.ones(lp.param.shape[lp.class_dim], dtype=dtype, device=param.device)
        if lr_scale is not None:
            row_lr = row_lr * lr_scale.to(dtype)
        if move_f is not None:
            row_lr = row_lr * move_f
    wd: Tensor | float = (
        weight_decay.to(dtype) if weight_decay is not None else float(group["weight_decay"])
    )

    g = -grad if group["maximize"] else grad
    if not decoupled and (isinstance(wd, Tensor) or wd != 0):
        g = g.addcmul(param, rows(wd)) if isinstance(wd, Tensor) else g.add(param, alpha=wd)
    if moving is not None:
        # Rows that do not move see a zero gradient, so their moments keep their bits
        # (even where the gradient is not finite).
        g = torch.where(lp.per_class(moving), g, 0.0)

    if moving is None or move_f is None:
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    else:
        exp_avg.lerp_(g, rows(move_f * (1 - beta1)))
        exp_avg_sq.mul_(rows(torch.where(moving, beta2, 1.0))).addcmul_(g, g, value=1 - beta2)
    second = exp_avg_sq
    if group["amsgrad"]:
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        second = state["max_exp_avg_sq"]

    # Tensor math in float64 (the values torch computes in Python floats), never .item():
    # no host read, also when the step counter lives on the device (fused).
    step = step_t.to(torch.float64)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5

    if decoupled:
        if row_lr is None:
            if isinstance(wd, Tensor):
                param.mul_(rows(1 - lr * wd))
            elif wd != 0:
                param.mul_(1 - lr * wd)
        elif isinstance(wd, Tensor) or wd != 0:
            param.mul_(rows(1 - lr * row_lr * wd))

    if row_lr is None:
        denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    elif eps > 0:
        # m / (sqrt(v) / b2 + eps) * k  ==  m / ((sqrt(v) + eps * b2) / (k * b2)): one fused
        # addcdiv as in torch. A resting row has k = 0, so its denominator is inf and its update
        # exactly 0 (the moments of a resting row are finite: it saw a zero gradient).
        k = rows(row_lr * (-lr / bias_correction1) * bias_correction2_sqrt)
        denom = second.sqrt().add_(eps * bias_correction2_sqrt).div_(k)
        param.addcdiv_(exp_avg, denom)
    else:
        denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
        update = torch.where(
            lp.per_class(moving if moving is not None else row_lr != 0), exp_avg / denom, 0.0
        )  # 0/0 in a resting row
        param.addcmul_(update, rows(row_lr * (-lr / bias_correction1)))
