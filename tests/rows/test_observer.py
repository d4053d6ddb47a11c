"""Label observation (``labelgrad.rows.observer``): one protocol and one implementation shared by
RowRules, Router and the integrations."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.rows.observer import ClassWindow, LabelObserver, ObservesLabels
from labelgrad.targets import TargetsLike


def test_row_rules_and_router_satisfy_the_protocol_and_plain_optimizers_do_not() -> None:
    head = nn.Linear(2, 3)
    rules = lg.RowRules(torch.optim.SGD(head.parameters(), lr=0.1), rows=head)
    router = lg.route({"all": (torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), [0, 1])})
    assert isinstance(rules, LabelObserver) and isinstance(router, LabelObserver)
    assert not isinstance(torch.optim.SGD(head.parameters(), lr=0.1), LabelObserver)
    # One implementation of observe / clear_observed / present, not two copies.
    assert lg.RowRules.observe is lg.Router.observe is ObservesLabels.observe
    assert lg.RowRules.clear_observed is lg.Router.clear_observed


class Recorder(torch.optim.SGD):
    """A user's own observer: any object with the protocol's members gets the targets."""

    num_classes = 4

    def __init__(self, params: object) -> None:
        super().__init__(params, lr=0.1)  # type: ignore[arg-type]
        self.seen: list[Tensor] = []
        self.cleared = 0

    def observe(
        self,
        targets: TargetsLike,
        *,
        class_dim: int = 1,
        encoding: object = None,
        like: Tensor | None = None,
        ignore_index: int = -100,
    ) -> None:
        assert isinstance(targets, Tensor)
        self.seen.append(targets)

    def clear_observed(self) -> None:
        self.cleared += 1


def test_router_passes_targets_to_any_label_observer_and_closes_its_window() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    rec = Recorder(b.parameters())
    assert isinstance(rec, LabelObserver)
    router = lg.route({"a": (torch.optim.SGD(a.parameters(), lr=0.1), [0, 1]), "b": (rec, [2, 3])})
    y = torch.tensor([0, 1])
    router.observe(y)
    assert len(rec.seen) == 1 and torch.equal(rec.seen[0], y)
    assert router.present.tolist() == [True, True, False, False]
    router.step()  # "b" rests: its window is closed without a step
    assert rec.cleared == 1
    assert router.present.tolist() == [False] * 4


def test_class_window_unions_clears_and_keeps_its_device() -> None:
    fixed = ClassWindow(3, torch.device("cpu"))
    mask = fixed.mask
    fixed.add(torch.tensor([True, False, False]))
    fixed.add(torch.tensor([False, False, True]))
    assert fixed.observed and fixed.present().tolist() == [True, False, True]
    assert fixed.union_over_ranks().tolist() == [True, False, True]  # one process: itself
    fixed.clear()
    assert not fixed.observed and fixed.mask is mask and not bool(mask.any())
    free = ClassWindow(3)
    assert free.mask is None and free.present().tolist() == [False] * 3
    free.add(torch.tensor([False, True, False]))
    snapshot = free.present()
    snapshot[0] = True  # a copy: the window is not edited through it
    assert free.present().tolist() == [False, True, False]
    free.clear()
    assert free.mask is None and not free.observed
