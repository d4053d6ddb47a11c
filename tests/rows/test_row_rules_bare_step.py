"""RowRules with no rule set is the wrapped optimizer's step, bitwise (issue 12 defect 6)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _row_helpers import head, set_grads

import labelgrad as lg

BARE = [
    pytest.param(cls, impl, dtype, id=f"{cls.__name__}-{impl}-{str(dtype)[6:]}")
    for cls in (torch.optim.Adam, torch.optim.AdamW)
    for impl in ("loop", "foreach", "fused")
    for dtype in (torch.float32, torch.float64)
]


@pytest.mark.parametrize(("cls", "impl", "dtype"), BARE)
def test_no_rules_steps_bitwise_as_the_bare_optimizer(cls: Any, impl: str, dtype: torch.dtype):
    """Before the fix Adam/AdamW went through labelgrad's kernel and differed by 1 ulp."""
    kw: dict[str, Any] = {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}
    kw.update({"fused": True} if impl == "fused" else {"foreach": impl == "foreach"})
    ours, bare = head(dtype, seed=4), head(dtype, seed=4)
    opt = lg.RowRules(cls(ours.parameters(), **kw), rows=ours)
    ref = cls(bare.parameters(), **kw)
    for t in range(4):
        set_grads(ours, t)
        set_grads(bare, t)
        opt.step()
        ref.step()
    for a, b in zip(ours.parameters(), bare.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(opt.state.values(), ref.state.values(), strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key
