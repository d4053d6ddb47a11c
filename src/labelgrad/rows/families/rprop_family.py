"""Rprop: its step sizes start at the current lr, so a row that starts moving late resets them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.rows.families.family import Family, FreshRule

__all__ = ["FAMILIES"]


def _initial(group: dict[str, Any], key: str) -> float | Tensor | None:
    if key == "step_size":
        lr = group["lr"]
        return lr.detach() if isinstance(lr, Tensor) else float(lr)
    return 0.0  # the previous gradient


def _always(group: dict[str, Any]) -> bool:
    return True


# Not linear in lr (the step sizes adapt multiplicatively); no weight decay.
FAMILIES: dict[type[torch.optim.Optimizer], Family] = {
    torch.optim.Rprop: Family(initial_state=_initial, fresh=FreshRule(applies=_always)),
}
