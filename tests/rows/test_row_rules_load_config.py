"""load_state_dict into a RowRules built with other arguments (issue 20, class 10).

Before: the saved rules silently replaced the ones given to the constructor. Now every
constructor argument has one documented outcome, and the table below must name every argument
of ``RowRules.__init__`` (a new argument fails ``test_the_table_covers_every_argument`` until
its outcome is decided):

- "refused": a ValueError naming what differs, and nothing is loaded;
- "restored": rules that change during training (``freeze``/``unfreeze``, the ``lr_scale``
  setter) come from the checkpoint;
- "not a rule": an implementation choice with the same results, kept as constructed.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import torch
from _row_helpers import C, D
from torch import nn

import labelgrad as lg

TABLE: dict[str, tuple[Any, Any, str, str | None]] = {
    "optimizer": (torch.optim.AdamW, torch.optim.Adam, "refused", "this one wraps"),
    "rows": ("linear", "weight", "refused", "rows="),
    "frozen": ([1], [2, 3], "restored", None),
    "lr_scale": ([1.0, 2.0, 0.5, 1.0], None, "restored", None),
    "weight_decay": ([0.1, 0.0, 0.2, 0.1], None, "refused", "weight_decay"),
    "skip_absent": (True, False, "refused", "skip_absent"),
    "num_classes": (C, C + 1, "refused", "num_classes"),
    "max_norm": (1.0, [1.0, 2.0, 1.0, 1.0], "refused", "max_norm"),
    "fast": (True, False, "not a rule", None),
}


def build(arg: str, value: Any) -> tuple[nn.Linear, lg.RowRules]:
    """A RowRules around a fresh head with every argument at its default but ``arg``."""
    c = value if arg == "num_classes" else C
    torch.manual_seed(0)
    h = nn.Linear(D, c, dtype=torch.float64)
    cls = value if arg == "optimizer" else torch.optim.AdamW
    rows: Any = h.weight if (arg, value) == ("rows", "weight") else h
    kwargs = {} if arg in ("optimizer", "rows") else {arg: value}
    return h, lg.RowRules(cls(h.parameters(), lr=0.1), rows=rows, **kwargs)


def test_the_table_covers_every_argument():
    params = set(inspect.signature(lg.RowRules.__init__).parameters) - {"self"}
    assert params == set(TABLE), "decide what load_state_dict does with the new argument"


@pytest.mark.parametrize("order", ["a_into_b", "b_into_a"])
@pytest.mark.parametrize("arg", list(TABLE))
def test_loading_a_checkpoint_of_other_arguments(arg: str, order: str):
    a, b, outcome, match = TABLE[arg]
    if order == "b_into_a":
        a, b = b, a
    h, saved_from = build(arg, a)
    g = torch.Generator().manual_seed(1)
    h.weight.grad = torch.randn(h.weight.shape, generator=g, dtype=h.weight.dtype)
    h.bias.grad = torch.randn(h.bias.shape, generator=g, dtype=h.bias.dtype)
    saved_from.step(targets=torch.arange(h.weight.shape[0]))
    sd = copy.deepcopy(saved_from.state_dict())
    _, into = build(arg, b)
    frozen_before = into.frozen.clone()
    if outcome == "refused":
        assert match is not None
        with pytest.raises(ValueError, match=match):
            into.load_state_dict(sd)
        assert not into.state and torch.equal(into.frozen, frozen_before)  # nothing loaded
        return
    into.load_state_dict(sd)
    if outcome == "restored":
        mine, saved = getattr(into, arg), getattr(saved_from, arg)
        assert (mine is None and saved is None) or torch.equal(mine, saved)
    else:
        assert getattr(into, arg) == b
