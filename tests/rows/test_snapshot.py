"""The snapshot path (``labelgrad.rows.snapshot``): what it copies, and that it puts resting rows
and their state back bitwise for an optimizer labelgrad has no kernel for."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from labelgrad.rows import snapshot
from labelgrad.rows.families import family_of
from labelgrad.rows.label_param import LabelParam


def _rules(opt: torch.optim.Optimizer, frozen: list[int], dynamic: bool) -> snapshot.StepRules:
    return snapshot.StepRules(
        optimizer=opt,
        family=family_of(opt),
        frozen_index=torch.tensor(frozen, dtype=torch.long),
        lr_scale=None,
        weight_decay=None,
        dynamic=dynamic,
        warned=set(),
    )


def _step(dynamic: bool) -> tuple[snapshot.Snapshot, nn.Linear, torch.optim.Optimizer, dict]:
    """Two RMSprop steps of a head's weight with rows 1 and 2 resting; returns the last snapshot
    and the weight and state before the last step."""
    torch.manual_seed(0)
    head = nn.Linear(3, 4, dtype=torch.float64)
    opt = torch.optim.RMSprop(head.parameters(), lr=0.1, momentum=0.5)
    lp = LabelParam(head.weight, 0)
    rules = _rules(opt, [1, 2], dynamic)
    moving = torch.tensor([True, False, False, True])
    before: dict = {}
    for _ in range(2):  # the second step has state to protect
        head.weight.grad = torch.randn(4, 3, dtype=torch.float64)
        before = {k: v.clone() for k, v in opt.state.get(head.weight, {}).items()}
        before["param"] = head.weight.detach().clone()
        snap = snapshot.take(rules, lp, opt.param_groups[0], moving, None)
        opt.step()
        snapshot.restore(rules, lp, opt.param_groups[0], moving, snap)
    return snap, head, opt, before


def _check_rows(head: nn.Linear, opt: torch.optim.Optimizer, before: dict) -> None:
    now = {**opt.state[head.weight], "param": head.weight.detach()}
    assert set(before) == {"step", "square_avg", "momentum_buffer", "param"}
    for key in ("square_avg", "momentum_buffer", "param"):
        assert torch.equal(now[key][1:3], before[key][1:3]), key  # resting: bitwise
        assert not torch.equal(now[key][0], before[key][0]), key  # moving
        assert not torch.equal(now[key][3], before[key][3]), key


def test_fixed_rows_copy_only_the_frozen_rows_and_restore_them_bitwise() -> None:
    snap, head, opt, before = _step(dynamic=False)
    assert snap.param is None and snap.state is None
    assert snap.param_rows is not None and snap.param_rows.shape == (2, 3)
    assert snap.state_rows is not None
    assert set(snap.state_rows) == {"square_avg", "momentum_buffer"}
    _check_rows(head, opt, before)


def test_dynamic_rows_copy_everything_and_restore_resting_rows_and_state_bitwise() -> None:
    snap, head, opt, before = _step(dynamic=True)
    assert snap.param is not None and snap.state is not None and snap.param_rows is None
    _check_rows(head, opt, before)


def test_a_snapshot_is_a_typed_record() -> None:
    names = {f.name for f in dataclasses.fields(snapshot.Snapshot)}
    assert names == {
        "keys",
        "fresh",
        "param",
        "param_rows",
        "state",
        "state_rows",
        "grad",
        "first_grad",
    }
