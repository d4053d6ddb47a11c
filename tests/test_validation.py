"""Class sets at every public entry point that takes one: one reading, one refusal."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import labelgrad as lg

C = 6


def _rules(**kwargs: object) -> lg.RowRules:
    head = nn.Linear(3, C)
    return lg.RowRules(torch.optim.SGD(head.parameters(), lr=0.1), rows=head, **kwargs)


def _route(classes: object) -> object:
    head = nn.Linear(3, C)
    return lg.route({"a": (torch.optim.SGD(head.parameters(), lr=0.1), classes)}, num_classes=C)


# Every public entry point that takes a set of classes, as a function of that set.
ENTRY_POINTS: dict[str, Callable[[object], object]] = {
    "freeze_classes": lambda c: lg.freeze_classes(c, num_classes=C),
    "labels_trick": lambda c: lg.labels_trick(c),
    "RowRules(frozen=)": lambda c: _rules(frozen=c),
    "RowRules.freeze": lambda c: _rules().freeze(c),
    "RowRules.unfreeze": lambda c: _rules(frozen=[0]).unfreeze(c),
    "route": _route,
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_two_dimensional_index_is_refused_not_flattened(entry: str) -> None:
    with pytest.raises(ValueError, match=r"1-D tensor of class indices.*got shape \(2, 2\)"):
        ENTRY_POINTS[entry](torch.tensor([[0, 1], [2, 3]]))


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_list_a_vector_and_a_scalar_tensor_are_accepted(entry: str) -> None:
    for classes in ([1, 2], torch.tensor([1, 2]), torch.tensor(1)):
        ENTRY_POINTS[entry](classes)


def test_a_scalar_index_and_a_list_freeze_the_same_rows() -> None:
    one, two = _rules(frozen=torch.tensor(3)), _rules(frozen=[3])
    assert torch.equal(one.frozen, two.frozen)
    assert one.frozen.nonzero().flatten().tolist() == [3]
