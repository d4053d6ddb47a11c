"""Adagrad: its sum starts at ``initial_accumulator_value``.

Adagrad creates that state when it is constructed, so resting rows already hold it: no
fresh-row rule is needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.rows.families.family import Family

__all__ = ["FAMILIES"]


def _initial(group: dict[str, Any], key: str) -> float | Tensor | None:
    return float(group["initial_accumulator_value"]) if key == "sum" else 0.0


FAMILIES: dict[type[torch.optim.Optimizer], Family] = {
    torch.optim.Adagrad: Family(decay="coupled", linear_in_lr=True, initial_state=_initial),
}
