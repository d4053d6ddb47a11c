"""RowRules and route read labels as told, never guessing an encoding from a shape (issue 15)."""

from __future__ import annotations

import pytest
import torch
from _row_helpers import C, head, set_grads
from torch import nn

import labelgrad as lg


def test_integer_2d_labels_need_an_encoding_and_are_read_as_told():
    h = head()
    opt = lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h, skip_absent=True)
    three_cols = torch.tensor([[0, 1, 1]])  # multi-hot for 3 classes, given to a 4-class head
    with pytest.raises(ValueError, match="encoding="):
        opt.observe(three_cols)  # before: read as class indices 0, 1, 1
    with pytest.raises(ValueError, match="encoding="):
        opt.step(targets=torch.tensor([[0, 1, 0, 1]]))  # K == C: step now takes encoding=
    w = h.weight.detach().clone()
    set_grads(h, 0)
    opt.step(targets=torch.tensor([[0, 1, 0, 1]]), encoding="multi_hot")
    assert (h.weight != w).any(dim=1).tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="num_classes"):
        opt.step(targets=three_cols, encoding="multi_hot")
    logits = torch.zeros(2, C)
    set_grads(h, 1)
    w = h.weight.detach().clone()
    opt.step(targets=torch.tensor([[0, 0, 1, 0], [0, 0, 1, 0]]), like=logits)
    assert (h.weight != w).any(dim=1).tolist() == [False, False, True, False]
    opt.observe(torch.tensor([[3, 3, 3]]), encoding="index")  # (N, T) class indices
    assert opt.present.tolist() == [False, False, False, True]


def test_route_reads_labels_as_told():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    router = lg.route(
        {
            "ab": (torch.optim.SGD(a.parameters(), lr=0.1), [0, 1]),
            "cd": (torch.optim.SGD(b.parameters(), lr=0.1), [2, 3]),
        }
    )
    (a.weight.sum() + b.weight.sum()).backward()
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    with pytest.raises(ValueError, match="encoding="):
        router.step(targets=torch.tensor([[0, 0, 1]]))  # before: stepped "ab" (index 0, 1)
    router.zero_grad()
    (a.weight.sum() + b.weight.sum()).backward()
    router.step(targets=torch.tensor([[0, 0, 1, 0]]), encoding="multi_hot")
    assert torch.equal(a.weight, wa) and not torch.equal(b.weight, wb)
