"""What labelgrad knows about the torch optimizers it wraps: how they apply weight decay, and which
ones it cannot wrap."""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch

__all__ = ["LR_LINEAR", "decay_kind", "refusal", "step_needs_closure"]

# Optimizers whose update is lr times a quantity that does not depend on lr (state included), so
# that scaling the update by s equals stepping with lr * s. ASGD, Rprop and LBFGS are not.
LR_LINEAR: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.SparseAdam,
)

# Optimizers that add weight_decay * param to the gradient (L2), unless the group says
# decoupled_weight_decay=True (AdamW; Adam, NAdam, RAdam with that flag).
_COUPLED: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.ASGD,
)


def decay_kind(
    optimizer: torch.optim.Optimizer, group: dict[str, Any]
) -> Literal["coupled", "decoupled"] | None:
    """``"coupled"`` (L2 added to the gradient), ``"decoupled"`` (param *= 1 - lr * wd), or None
    where labelgrad does not know how ``optimizer`` applies weight decay."""
    if isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay", False):
        return "decoupled"
    if isinstance(optimizer, _COUPLED):
        return "coupled"
    return None


def refusal(optimizer: torch.optim.Optimizer) -> str | None:
    """Why :class:`labelgrad.RowRules` cannot honour its contract around ``optimizer``, or None.

    Refused: optimizers whose ``step`` needs a closure (LBFGS re-evaluates the model several
    times per step), and optimizers that couple the rows of a parameter, so that no row can be
    treated as its own parameter: Muon orthogonalises the whole matrix update, Adafactor
    factors the second moment of a matrix into row and column statistics.
    """
    if step_needs_closure(optimizer):
        return (
            "its step() requires a closure (LBFGS-style optimizers re-evaluate the model "
            "several times per step); closure optimizers are not supported"
        )
    coupled = {"Muon": "orthogonalises the whole matrix update", "Adafactor": _ADAFACTOR}
    for cls in type(optimizer).__mro__:
        if cls.__module__.startswith("torch.optim") and cls.__name__ in coupled:
            return (
                f"it couples the rows of a parameter ({coupled[cls.__name__]}), so a row cannot "
                "be frozen or rescaled on its own; put the label-owned parameters in another "
                "optimizer (e.g. AdamW) and wrap that one"
            )
    return None


_ADAFACTOR = "its second moment of a matrix is factored into row and column statistics"


def step_needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """True where ``optimizer.step`` has a required ``closure`` argument (LBFGS)."""
    try:
        params = inspect.signature(optimizer.step).parameters
    except (TypeError, ValueError):  # builtins without a signature: assume the usual one
        return False
    closure = params.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty
