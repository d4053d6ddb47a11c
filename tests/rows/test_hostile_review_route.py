"""Hostile review of issue 24's route state and class-set checks (HOSTILE.md 4 and 5).

route's state_dict now records each group's classes; ``classes`` returns copies; a 2-D tensor
of class indices is refused instead of flattened. Compared here with plain optimizers stepped
by hand, bitwise.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import labelgrad as lg

DT = torch.float64


def _model(seed: int) -> nn.ModuleDict:
    torch.manual_seed(seed)
    return nn.ModuleDict({"a": nn.Linear(3, 2, dtype=DT), "b": nn.Linear(3, 2, dtype=DT)})


def _router(m: nn.ModuleDict, classes_a: object, classes_b: object) -> lg.Router:
    return lg.route(
        {
            "a": (torch.optim.AdamW(m["a"].parameters(), lr=0.1), classes_a),
            "b": (torch.optim.SGD(m["b"].parameters(), lr=0.1, momentum=0.9), classes_b),
        },
        num_classes=4,
    )


def _train(m: nn.ModuleDict, router: lg.Router, batches: list[torch.Tensor]) -> None:
    x = torch.linspace(-1, 1, 6, dtype=DT).reshape(2, 3)
    for y in batches:
        router.zero_grad()
        logits = torch.cat([m["a"](x), m["b"](x)], dim=1)
        nn.functional.cross_entropy(logits, y).backward()
        router.step(targets=y)


BATCHES = [torch.tensor([0, 3]), torch.tensor([1, 1]), torch.tensor([2, 3]), torch.tensor([0, 0])]


@pytest.mark.parametrize(
    "form",
    ["list", "tensor", "bool_mask", "tuple"],
)
def test_resume_through_a_weights_only_checkpoint_is_bitwise(form):
    """A route checkpoint saved mid-run (torch.save, then torch.load(weights_only=True)) resumes
    exactly where the uninterrupted run goes, whatever form the classes were given in."""
    forms = {
        "list": ([0, 1], [2, 3]),
        "tensor": (torch.tensor([1, 0, 1]), torch.tensor([3, 2])),
        "bool_mask": (torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([0, 0, 1, 1]).bool()),
        "tuple": ((1, 0), (3, 2)),
    }
    ca, cb = forms[form]
    ref = _model(0)
    ref_router = _router(ref, ca, cb)
    _train(ref, ref_router, BATCHES)

    m = _model(0)
    router = _router(m, ca, cb)
    _train(m, router, BATCHES[:2])
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "router": router.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m2 = _model(1)
    m2.load_state_dict(ck["model"])
    router2 = _router(m2, ca, cb)
    router2.load_state_dict(ck["router"])
    _train(m2, router2, BATCHES[2:])
    for p, q in zip(ref.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert {k: v.tolist() for k, v in router2.classes.items()} == {"a": [0, 1], "b": [2, 3]}


def test_state_dict_is_not_aliased_by_later_edits_of_classes():
    m = _model(0)
    router = _router(m, [0, 1], [2, 3])
    sd = router.state_dict()
    router.classes["a"].fill_(3)  # a copy: neither the router nor its record move
    meta = next(v for k, v in sd.items() if k not in ("a", "b"))
    meta["classes"]["a"].append(9)  # editing the returned record does not reach the router
    assert router.state_dict()[next(k for k in sd if k not in ("a", "b"))]["classes"] == {
        "a": [0, 1],
        "b": [2, 3],
    }


@pytest.mark.parametrize(
    "build",
    [
        lambda c: lg.freeze_classes(c),
        lambda c: lg.route({"a": (torch.optim.SGD(nn.Linear(2, 4).parameters(), lr=0.1), c)}),
        lambda c: lg.RowRules(
            torch.optim.SGD((lin := nn.Linear(2, 4)).parameters(), lr=0.1), rows=lin, frozen=c
        ),
    ],
    ids=["freeze_classes", "route", "RowRules.frozen"],
)
@pytest.mark.parametrize(
    "classes",
    [torch.tensor([[0, 1]]), torch.tensor([[0], [1]]), torch.zeros(1, 4, dtype=torch.bool)],
    ids=["row", "column", "2d-bool"],
)
def test_a_two_dimensional_class_tensor_is_refused_everywhere(build, classes):
    with pytest.raises(ValueError, match=r"(classes|frozen).*shape.*\(\d+, \d+\)$"):
        build(classes)


@pytest.mark.parametrize(
    "build",
    [
        lambda c: lg.freeze_classes(c),
        lambda c: lg.route(
            {"a": (torch.optim.SGD(nn.Linear(2, 4).parameters(), lr=0.1), c)}, num_classes=4
        ),
    ],
    ids=["freeze_classes", "route"],
)
def test_a_zero_d_index_is_one_class(build):
    """A 0-d tensor is a single class (it stays accepted: not a 2-D index)."""
    built = build(torch.tensor(2))
    if isinstance(built, lg.Router):
        assert built.classes["a"].tolist() == [2]
    else:
        z = torch.zeros(2, 4, requires_grad=True)
        (g,) = torch.autograd.grad(built(z), z, torch.ones(2, 4))
        assert g[:, 2].eq(0).all() and g[:, [0, 1, 3]].eq(1).all()
