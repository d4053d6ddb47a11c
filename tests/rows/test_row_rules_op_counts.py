"""Operator budgets of RowRules' step (issue 24, P5): counted with torch.profiler on the CPU.

The P5 setting: AdamW (foreach) on a trunk and a classifier head, half the classes frozen, a
per-class lr_scale and skip_absent, with the optimizer state either warm (every row has moments,
as after earlier training) or zero (rows frozen from the start and classes never seen, as in
class-incremental learning with a new head).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import labelgrad as lg

C, WIDTH, BATCH = 100, 64, 32
SEEN = C // 8  # the batch's classes come from the first eighth: the others are never seen


def aten_ops(fn: Callable[[], object]) -> int:
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def _labels(y: Tensor, kind: str) -> Tensor:
    if kind == "index":
        return y
    # Multi-hot labels as BCE takes them: float, -1 where the label is unknown.
    out = torch.zeros(BATCH, C)
    out[torch.arange(BATCH), y] = 1.0
    out[:, SEEN : 2 * SEEN] = -1.0
    return out


def p5_step(
    *, rules: bool, warm: bool, labels: str = "index", optimizer: str = "adamw"
) -> tuple[Callable[[], object], nn.Linear, torch.optim.Optimizer]:
    """One optimizer step of the P5 setting, repeatable on the same gradients."""
    torch.manual_seed(1)
    head = nn.Linear(WIDTH, C)
    model = nn.Sequential(nn.Linear(16, WIDTH), nn.ReLU(), head)
    opt: torch.optim.Optimizer
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, foreach=True)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=0.05
        )
    x = torch.randn(BATCH, 16)
    y = torch.randint(0, SEEN, (BATCH,))
    if warm:  # earlier training on every class: every row has state
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), torch.arange(BATCH) % C).backward()
            opt.step()
    if rules:
        opt = lg.RowRules(
            opt,
            rows=head,
            frozen=torch.arange(0, C, 2),
            lr_scale=torch.rand(C) + 0.5,
            skip_absent=True,
        )
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    target = _labels(y, labels)
    if isinstance(opt, lg.RowRules):
        rr = opt
        return (lambda: rr.step(targets=target)), head, opt
    plain = opt
    return (lambda: plain.step()), head, opt


LABELS = pytest.mark.parametrize("labels", ["index", "float"])
STATES = pytest.mark.parametrize("warm", [False, True], ids=["zero_state", "warm_state"])


@LABELS
@STATES
def test_adamw_row_rules_step_within_one_and_a_half_bare_steps(warm: bool, labels: str):
    # Each aten operator pays dispatch on the CPU and a kernel launch on a GPU (issue 24: <=1.5x).
    bare = aten_ops(p5_step(rules=False, warm=warm)[0])
    ruled = aten_ops(p5_step(rules=True, warm=warm, labels=labels)[0])
    assert ruled <= 1.5 * bare, (ruled, bare)


@LABELS
@STATES
def test_sgd_row_rules_step_operators(warm: bool, labels: str):
    # SGD's bare step is short (36 operators here): the budget is on the operators added.
    bare = aten_ops(p5_step(rules=False, warm=warm, optimizer="sgd")[0])
    ruled = aten_ops(p5_step(rules=True, warm=warm, labels=labels, optimizer="sgd")[0])
    assert ruled - bare <= 125, (ruled, bare)


class _SqrtElements(TorchDispatchMode):
    """Counts the elements every sqrt reads."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket in (torch.ops.aten.sqrt, torch.ops.aten._foreach_sqrt):
            first = args[0]
            self.elements += sum(t.numel() for t in (first if isinstance(first, list) else [first]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("warm", [False, True], ids=["zero_state", "warm_state"])
def test_adam_step_reads_only_the_rows_that_move(warm: bool):
    # sqrt of exact zeros (never-touched second moments) is several times slower than of
    # positive numbers on common CPUs: rows that rest must not be computed at all.
    step, head, opt = p5_step(rules=True, warm=warm)
    step()  # the moving rows of this batch: present and not frozen
    assert isinstance(opt, lg.RowRules)
    opt.observe(torch.arange(SEEN))
    moving = torch.zeros(C, dtype=torch.bool)
    moving[:SEEN] = True
    moving[::2] = False
    trunk = sum(p.numel() for p in opt.param_groups[0]["params"]) - head.weight.numel() - C
    with _SqrtElements() as counter:
        opt.step()
    moved = int(moving.sum())
    assert counter.elements == trunk + moved * (WIDTH + 1)
