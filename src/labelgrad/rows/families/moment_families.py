"""The torch optimizers whose state starts at zero and whose rows need nothing but the snapshot
path: Adamax, NAdam, RAdam, RMSprop, Adadelta, SparseAdam and ASGD.

Give one of them its own module (as :mod:`labelgrad.rows.families.adam_family`) when it gets a
fast kernel or a fresh-row rule.
"""

from __future__ import annotations

import torch

from labelgrad.rows.families.family import Family

__all__ = ["FAMILIES"]

_L2_LINEAR = Family(decay="coupled", linear_in_lr=True)

FAMILIES: dict[type[torch.optim.Optimizer], Family] = {
    torch.optim.Adamax: _L2_LINEAR,
    torch.optim.NAdam: _L2_LINEAR,
    torch.optim.RAdam: _L2_LINEAR,
    torch.optim.RMSprop: _L2_LINEAR,
    torch.optim.Adadelta: _L2_LINEAR,
    # No weight decay at all.
    torch.optim.SparseAdam: Family(linear_in_lr=True),
    # Its eta and mu depend on lr: not linear in it.
    torch.optim.ASGD: Family(decay="coupled"),
}
