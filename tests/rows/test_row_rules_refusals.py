"""RowRules refuses optimizers it cannot honour and names state it cannot protect (issue 12
defect 5).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _row_helpers import head, set_grads

import labelgrad as lg


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: torch.optim.LBFGS(p), "closure"),
        (lambda p: torch.optim.Muon([q for q in p if q.dim() == 2]), "couples the rows"),
        (lambda p: torch.optim.Adafactor(p), "couples the rows"),
    ],
    ids=["lbfgs", "muon", "adafactor"],
)
def test_closure_and_row_coupling_optimizers_are_refused(make: Any, match: str):
    h = head(torch.float32)
    opt = make(list(h.parameters()))
    rows: Any = h if not isinstance(opt, torch.optim.Muon) else h.weight
    with pytest.raises(TypeError, match=match):
        lg.RowRules(opt, rows=rows, frozen=[0])


class RowSummed(torch.optim.Optimizer):
    """A custom optimizer with a state not shaped like its parameter (one value per column)."""

    def __init__(self, params: Any, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                st.setdefault("col", torch.zeros(p.shape[-1:], dtype=p.dtype))
                st["col"].add_(p.grad.reshape(-1, p.shape[-1]).square().sum(0))
                p.add_(p.grad / (st["col"].sqrt() + 1), alpha=-group["lr"])


def test_state_not_shaped_like_the_parameter_is_named_in_a_warning():
    h = head()
    opt = lg.RowRules(RowSummed([h.weight]), rows=h.weight, frozen=[0])
    set_grads(h, 0)
    with pytest.warns(UserWarning, match="'col' of shape \\(3,\\)"):
        opt.step()  # creates the state
    w0 = h.weight.detach()[0].clone()
    set_grads(h, 2)
    opt.step()
    assert torch.equal(h.weight[0], w0)  # the row itself is still protected
