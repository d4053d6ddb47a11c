"""The optimizer state of a row that has not moved yet: what a fresh parameter would start from.

A row that sits out the step in which its tensor's state is created (frozen at first, or absent
with ``skip_absent``) must later start as a new parameter would, not from zeros: Rprop starts its
step sizes at ``lr``, and SGD's momentum buffer does not exist before the first step (the first
step sets it to the gradient, without dampening). The tensor's scalar state (step counters,
NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``) stays shared by its rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.sgd import sgd

__all__ = ["initial_value", "needs_first_step", "sgd_first_step", "tracks"]


def initial_value(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], key: str
) -> float | Tensor | None:
    """The value torch gives state ``key`` of a new parameter before its first update.

    None for state created from the first gradient (SGD's momentum buffer, see
    :func:`sgd_first_step`); 0 for every other state torch's optimizers create (moments, running
    averages, Rprop's previous gradient, ASGD's average) and for optimizers labelgrad does not
    know.
    """
    if isinstance(optimizer, torch.optim.Rprop) and key == "step_size":
        lr = group["lr"]
        return lr.detach() if isinstance(lr, Tensor) else float(lr)
    if isinstance(optimizer, torch.optim.Adagrad) and key == "sum":
        return float(group["initial_accumulator_value"])
    if isinstance(optimizer, torch.optim.SGD) and key == "momentum_buffer":
        return None
    return 0.0


def tracks(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> bool:
    """True where a row's first move needs more than the state it kept while resting: a
    non-zero initial value that can change (Rprop's step size is the current lr), or a first
    step of its own (SGD with momentum). Adagrad creates its state (sum = the initial
    accumulator value) when it is constructed, so its resting rows already hold it."""
    return isinstance(optimizer, torch.optim.Rprop) or needs_first_step(optimizer, group)


def needs_first_step(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> bool:
    """True where a row's first update differs from the optimizer's recurrence applied to its
    initial state (SGD with momentum: the buffer starts as the gradient itself)."""
    return isinstance(optimizer, torch.optim.SGD) and group["momentum"] != 0


def sgd_first_step(group: dict[str, Any], param: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
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
    return out, buf
