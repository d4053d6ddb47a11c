"""RowRules and route check every rule at construction and every field at load_state_dict
(issue 15).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from _row_helpers import C, head, set_grads
from torch import nn

import labelgrad as lg


def saved_rules() -> dict[str, Any]:
    h = head()
    opt = lg.RowRules(torch.optim.Adam(h.parameters()), rows=h, frozen=[1], lr_scale=[1.0] * C)
    set_grads(h, 0)
    opt.step()
    return copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("frozen", torch.tensor([True]), "\\['frozen'\\] must be a bool tensor of shape \\(4,\\)"),
        ("frozen", torch.tensor([1, 0, 0, 0]), "\\['frozen'\\] must be a bool tensor"),
        ("lr_scale", torch.ones(3, dtype=torch.float64), "\\['lr_scale'\\] must be a float tensor"),
        ("lr_scale", torch.tensor([1.0, -1.0, 1.0, 1.0]), "\\['lr_scale'\\] must be finite"),
        (
            "weight_decay",
            torch.tensor([0.0, float("nan"), 0.0, 0.0]),
            "\\['weight_decay'\\] must be",
        ),
        ("present", torch.zeros(5, dtype=torch.bool), "'present'"),
        ("skip_absent", 1, "\\['skip_absent'\\] must be a bool"),
        ("num_classes", 5, "num_classes=5"),
        ("started", torch.ones(1, C, dtype=torch.bool), "'started'"),
    ],
)
def test_load_state_dict_checks_every_field(field: str, value: Any, match: str):
    """Before: a wrong-length frozen broadcast (the whole head frozen) or failed deep in torch."""
    sd = saved_rules()
    sd["row_rules"][field] = value
    h = head()
    opt = lg.RowRules(torch.optim.Adam(h.parameters()), rows=h)
    frozen_before = opt.frozen.clone()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert torch.equal(opt.frozen, frozen_before)  # nothing half-loaded


def test_load_state_dict_of_another_optimizer_type_is_refused_at_load():
    sd = saved_rules()  # around Adam
    h = head()
    opt = lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1, momentum=0.9), rows=h)
    with pytest.raises(ValueError, match="around Adam, this one wraps SGD"):
        opt.load_state_dict(sd)


def test_route_state_dict_of_other_optimizer_types_is_refused_at_load():
    def build(cls: Any) -> lg.Router:
        a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        return lg.route(
            {"ab": (cls(a.parameters(), lr=0.1), [0, 1]), "cd": (cls(b.parameters(), lr=0.1), [2])}
        )

    sd = build(torch.optim.Adam).state_dict()
    with pytest.raises(ValueError, match="'ab' was saved from Adam"):
        build(torch.optim.SGD).load_state_dict(sd)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frozen": torch.tensor([True, False])}, "frozen as a bool mask must have shape"),
        ({"frozen": [True, False, True, False]}, "frozen must hold int class indices"),
        ({"lr_scale": torch.ones(C, 1)}, "lr_scale must be a 1-D tensor"),
        ({"weight_decay": [0.1] * (C + 1)}, "weight_decay has 5 entries"),
    ],
)
def test_construction_refuses_wrong_lengths(kwargs: dict[str, Any], match: str):
    h = head()
    with pytest.raises((ValueError, TypeError), match=match):
        lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h, **kwargs)


def test_route_refuses_closure_optimizers():
    a = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="closure"):
        lg.route({"a": (torch.optim.LBFGS(a.parameters()), [0, 1])})
