"""The family registry (``labelgrad.rows.families``): lookup by type, and every fast kernel
against the exact snapshot path.

The kernel test is parametrized over the registry, so a family that gains a kernel is covered
without a new test: its resting rows and their state must keep their bits, and its moving rows
and state must equal the snapshot path (torch's own step, rescaled) to rounding.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import labelgrad as lg
from labelgrad.rows.families import REGISTRY, decay_kind, family_of, fast_kernel
from labelgrad.rows.families import family as families_family

C, D = 5, 4
FAST = [pytest.param(cls, id=cls.__name__) for cls, fam in REGISTRY.items() if fam.fast]
# Optimizer settings that exercise more of a kernel; a new family runs with lr alone.
SETTINGS: dict[type[torch.optim.Optimizer], list[dict[str, Any]]] = {
    torch.optim.SGD: [
        {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1},
        {"momentum": 0.9, "nesterov": True},
    ],
    torch.optim.Adam: [{"weight_decay": 0.1}, {"amsgrad": True}],
    torch.optim.AdamW: [{"weight_decay": 0.1}, {"amsgrad": True, "maximize": True}],
}
RULES = {
    "frozen": {"frozen": [1]},
    "absent": {"skip_absent": True},
    "frozen_absent_scaled": {"frozen": [3], "skip_absent": True, "lr_scale": [0.5, 1, 2, 0, 1]},
}


def _run(
    cls: type[torch.optim.Optimizer], kwargs: dict[str, Any], rules: dict[str, Any], fast: bool
) -> tuple[nn.Linear, lg.RowRules]:
    torch.manual_seed(0)
    head = nn.Linear(D, C, dtype=torch.float64)
    opt = lg.RowRules(cls(head.parameters(), lr=0.01, **kwargs), rows=head, fast=fast, **rules)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        head.weight.grad = torch.randn(C, D, generator=g, dtype=torch.float64)
        head.bias.grad = torch.randn(C, generator=g, dtype=torch.float64)
        y = torch.randint(0, C, (3,), generator=g)
        opt.step(targets=y)
    return head, opt


@pytest.mark.parametrize("share", [0.0, 1.0], ids=["masked", "gathered"])
@pytest.mark.parametrize("rules", list(RULES.values()), ids=list(RULES))
@pytest.mark.parametrize("setting", [0, 1, 2])
@pytest.mark.parametrize("cls", FAST)
def test_every_fast_kernel_equals_the_snapshot_path(
    cls: Any, setting: int, rules: dict[str, Any], share: float, monkeypatch: pytest.MonkeyPatch
):
    # A kernel either steps every row with factors that keep resting rows still (masked) or
    # gathers the moving rows of a CPU tensor and steps them alone (gathered): both are checked.
    monkeypatch.setattr(families_family, "GATHER_SHARE", share)
    settings = [{}, *SETTINGS.get(cls, [])]
    if setting >= len(settings):
        pytest.skip(f"{cls.__name__} has {len(settings)} settings")
    kwargs = settings[setting]
    fast, fast_opt = _run(cls, kwargs, rules, fast=True)
    slow, slow_opt = _run(cls, kwargs, rules, fast=False)
    tol = {"rtol": 1e-12, "atol": 1e-15}
    for pf, ps in zip(fast.parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(pf, ps, **tol)
        assert set(fast_opt.state[pf]) == set(slow_opt.state[ps])
        for key, value in fast_opt.state[pf].items():
            torch.testing.assert_close(value, slow_opt.state[ps][key], **tol)
    # A frozen row and its state keep their bits on both paths: equal to their initial value.
    torch.manual_seed(0)
    init = nn.Linear(D, C, dtype=torch.float64)
    for c in rules.get("frozen", []):
        assert torch.equal(fast.weight[c], init.weight[c]) and torch.equal(
            slow.weight[c], init.weight[c]
        )
        for key, value in fast_opt.state[fast.weight].items():
            if value.shape == fast.weight.shape:
                assert torch.equal(value[c], slow_opt.state[slow.weight][key][c]), key


@pytest.mark.parametrize(
    "cls",
    [pytest.param(cls, id=cls.__name__) for cls in REGISTRY if cls is not torch.optim.SparseAdam],
)
def test_the_kernel_is_used_where_it_exists(cls: Any) -> None:
    """A family with a kernel hides the label-owned gradients from the optimizer's own step."""
    head = nn.Linear(2, 3)
    opt = lg.RowRules(cls(head.parameters(), lr=0.1), rows=head, frozen=[0])
    head(torch.randn(4, 2)).sum().backward()
    hidden: list[list[bool]] = []
    opt.optimizer.register_step_pre_hook(
        lambda o, args, kwargs: hidden.append([p.grad is None for p in head.parameters()])
    )
    opt.step()
    assert hidden == [[REGISTRY[cls].fast is not None] * 2]


def test_family_lookup_follows_base_classes_but_kernels_need_the_exact_type() -> None:
    class MyAdamW(torch.optim.AdamW):
        pass

    p = [nn.Parameter(torch.zeros(2))]
    assert family_of(MyAdamW(p)) is REGISTRY[torch.optim.AdamW]
    assert fast_kernel(MyAdamW(p)) is None
    assert fast_kernel(torch.optim.AdamW(p)) is REGISTRY[torch.optim.AdamW].fast is not None
    assert family_of(torch.optim.LBFGS(p)).decay is None
    assert decay_kind(torch.optim.Adam(p), {"decoupled_weight_decay": True}) == "decoupled"
    assert decay_kind(torch.optim.Adam(p), {}) == "coupled"
    assert decay_kind(torch.optim.Rprop(p), {}) is None


def test_every_torch_optimizer_that_rows_can_wrap_is_registered() -> None:
    wrapped = {
        torch.optim.SGD,
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.Adamax,
        torch.optim.NAdam,
        torch.optim.RAdam,
        torch.optim.RMSprop,
        torch.optim.Adagrad,
        torch.optim.Adadelta,
        torch.optim.SparseAdam,
        torch.optim.ASGD,
        torch.optim.Rprop,
    }
    assert wrapped <= set(REGISTRY)
    linear = {cls for cls, fam in REGISTRY.items() if fam.linear_in_lr}
    assert linear == wrapped - {torch.optim.ASGD, torch.optim.Rprop}
