"""route hands the observed labels to every optimizer it steps that observes labels, routed or
``always`` (issue 20, class 10 "Composition").

Before: ``route(..., always=[RowRules(..., skip_absent=True)])`` failed "needs the batch's
targets" although ``router.step(targets=y)`` was given. Every combination of a plain optimizer
or a RowRules with ``skip_absent`` in a group and in ``always``, with the labels given to
``step``, observed micro-batch by micro-batch, or stepped through ``GradScaler``, is compared
bitwise with the same optimizers driven by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg

DT = torch.float64
C = 5
GROUPS = {"a": [0, 1, 2], "b": [3, 4]}
BATCHES = [
    torch.tensor([0, 1, 1]),
    torch.tensor([3, 3]),
    torch.tensor([2, 4, 4]),
    torch.tensor([1]),
]


class Model(nn.Module):
    """A trunk, a shared head over every class (stepped always) and one head per group."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 4, dtype=DT)
        self.shared = nn.Linear(4, C, dtype=DT)
        self.a = nn.Linear(4, C, dtype=DT)
        self.b = nn.Linear(4, C, dtype=DT)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.trunk(x))
        return self.shared(h) + self.a(h) + self.b(h)


def make(m: Model, routed: str, always: str) -> tuple[dict[str, Any], list[Any]]:
    groups: dict[str, Any] = {}
    for name in GROUPS:
        head = getattr(m, name)
        if routed == "rules":
            groups[name] = lg.RowRules(
                torch.optim.Adam(head.parameters(), lr=0.1), rows=head, skip_absent=True
            )
        else:
            groups[name] = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    shared: Any
    if always == "rules":
        shared = lg.RowRules(
            torch.optim.AdamW(m.shared.parameters(), lr=0.1, weight_decay=0.1),
            rows=m.shared,
            frozen=[2],
            skip_absent=True,
        )
    else:
        shared = torch.optim.SGD(m.shared.parameters(), lr=0.1, momentum=0.9)
    return groups, [torch.optim.SGD(m.trunk.parameters(), lr=0.1), shared]


def backward(m: Model, y: Tensor, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(int(y.sum()))
    x = torch.randn(len(y), 4, generator=g, dtype=DT)
    (nn.functional.cross_entropy(m(x), y) * scale).backward()


def by_hand(m: Model, routed: str, always: str) -> None:
    groups, always_opts = make(m, routed, always)
    for y in BATCHES:
        for opt in [*groups.values(), *always_opts]:
            opt.zero_grad()
        backward(m, y)
        for opt in always_opts:
            opt.step(targets=y) if isinstance(opt, lg.RowRules) else opt.step()
        for name, classes in GROUPS.items():
            if any(c in classes for c in y.tolist()):
                opt = groups[name]
                opt.step(targets=y) if isinstance(opt, lg.RowRules) else opt.step()


def routed_run(m: Model, routed: str, always: str, feed: str) -> None:
    groups, always_opts = make(m, routed, always)
    router = lg.route(
        {name: (groups[name], classes) for name, classes in GROUPS.items()},
        num_classes=C,
        always=always_opts,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if feed == "scaler" else None
    for y in BATCHES:
        router.zero_grad()
        if scaler is None:
            backward(m, y)
        else:
            backward(m, y, scale=float(scaler.scale(torch.ones((), dtype=DT))))
        if feed == "step":
            router.step(targets=y)
        elif feed == "micro_batches":
            router.observe(y[:1])
            router.observe(y[1:])
            router.step()
        else:
            assert scaler is not None
            router.observe(y)
            scaler.step(router)
            scaler.update()


@pytest.mark.parametrize("feed", ["step", "micro_batches", "scaler"])
@pytest.mark.parametrize("always", ["plain", "rules"])
@pytest.mark.parametrize("routed", ["plain", "rules"])
def test_every_observer_the_router_steps_gets_the_labels(routed: str, always: str, feed: str):
    ours, ref = Model(), Model()
    routed_run(ours, routed, always, feed)
    by_hand(ref, routed, always)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), name
    if always == "rules":
        # The frozen class and the rows of classes absent from a batch did not move.
        assert torch.equal(ours.shared.weight[2], Model().shared.weight[2])


def test_an_always_observer_must_share_the_class_ids():
    m = Model()
    small = nn.Linear(4, C - 1, dtype=DT)
    rules = lg.RowRules(torch.optim.SGD(small.parameters(), lr=0.1), rows=small, skip_absent=True)
    with pytest.raises(ValueError, match=r"always\[0\]: its optimizer observes targets over 4"):
        lg.route(
            {"a": (torch.optim.SGD(m.a.parameters(), lr=0.1), [0, 1, 2, 3, 4])},
            always=[rules],
        )


def test_observe_reaches_the_always_observer_once_per_call():
    m = Model()
    groups, always_opts = make(m, "plain", "rules")
    router = lg.route(
        {name: (groups[name], classes) for name, classes in GROUPS.items()},
        num_classes=C,
        always=always_opts,
    )
    router.observe(torch.tensor([4]))
    assert always_opts[1].present.tolist() == [False, False, False, False, True]
    router.zero_grad()
    assert not always_opts[1].present.any()
