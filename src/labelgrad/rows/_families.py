"""What labelgrad knows about the torch optimizers it wraps: how they apply weight decay."""

from __future__ import annotations

from typing import Any, Literal

import torch

__all__ = ["LR_LINEAR", "decay_kind"]

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
