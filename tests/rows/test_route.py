"""lg.route: separate optimizers per label group, stepped only when their classes occur."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg

DT = torch.float64


class TwoHeads(nn.Module):
    """A shared trunk and one head per label group: classes 0-2 (frequent) and 3-5 (rare)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Linear(4, 4, dtype=DT)
        self.frequent = nn.Linear(4, 3, dtype=DT)
        self.rare = nn.Linear(4, 3, dtype=DT)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.trunk(x))
        return torch.cat([self.frequent(h), self.rare(h)], dim=1)


def build(model: TwoHeads) -> dict[str, tuple[torch.optim.Optimizer, list[int]]]:
    return {
        "frequent": (
            torch.optim.SGD(
                [*model.trunk.parameters(), *model.frequent.parameters()], lr=0.1, momentum=0.9
            ),
            [0, 1, 2],
        ),
        "rare": (torch.optim.AdamW(model.rare.parameters(), lr=0.01, weight_decay=0.1), [3, 4, 5]),
    }


def state_tensors(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [v.clone() for st in opt.state.values() for v in st.values() if isinstance(v, Tensor)]


BATCHES = [
    (torch.arange(6), True),  # both groups present
    (torch.tensor([0, 1, 1, 2]), False),  # rare absent
    (torch.tensor([4, 0]), True),
    (torch.tensor([2, 2]), False),
]


def test_steps_only_groups_present_and_matches_plain_optimizers():
    model, plain_model = TwoHeads(), TwoHeads()
    router = lg.route(build(model))
    plain = {name: opt for name, (opt, _) in build(plain_model).items()}
    x = torch.randn(6, 4, dtype=DT)
    for t, (y, rare_present) in enumerate(BATCHES):
        xb = x[: len(y)] + t
        rare_before = [p.detach().clone() for p in model.rare.parameters()]
        rare_state = state_tensors(router["rare"])
        for m, zero in ((model, router.zero_grad), (plain_model, None)):
            if zero is not None:
                zero()
            else:
                for opt in plain.values():
                    opt.zero_grad()
            nn.functional.cross_entropy(m(xb), y).backward()
        router.step(targets=y)
        plain["frequent"].step()  # every batch here has a frequent class
        if rare_present:
            plain["rare"].step()
        else:
            for p, old in zip(model.rare.parameters(), rare_before, strict=True):
                assert torch.equal(p, old)
            assert all(
                torch.equal(a, b)
                for a, b in zip(state_tensors(router["rare"]), rare_state, strict=True)
            )
        for a, b in zip(model.parameters(), plain_model.parameters(), strict=True):
            assert torch.equal(a, b)


def test_route_passes_targets_to_row_rules_inside():
    torch.manual_seed(0)
    head_a, head_b = nn.Linear(4, 6, dtype=DT), nn.Linear(4, 6, dtype=DT)
    rules = lg.RowRules(
        torch.optim.Adam(head_a.parameters(), lr=0.1), rows=head_a, skip_absent=True
    )
    router = lg.route(
        {"a": (rules, [0, 1, 2]), "b": (torch.optim.SGD(head_b.parameters(), lr=0.1), [3, 4, 5])}
    )
    x = torch.randn(3, 4, dtype=DT)
    y = torch.tensor([0, 0, 1])
    (head_a(x).sum() + head_b(x).sum()).backward()
    before_a, before_b = head_a.weight.detach().clone(), head_b.weight.detach().clone()
    router.step(targets=y)
    assert (head_a.weight != before_a).any(dim=1).tolist() == [True, True] + [False] * 4
    assert torch.equal(head_b.weight, before_b)
    assert not rules.present.any()
    with pytest.raises(ValueError, match="num_classes"):
        lg.route({"a": (rules, [0, 1, 2])}, num_classes=4)


def test_state_dict_round_trip():
    model, other = TwoHeads(), TwoHeads()
    router, resumed = lg.route(build(model)), lg.route(build(other))
    x = torch.randn(6, 4, dtype=DT)
    for y, _ in BATCHES[:2]:
        router.zero_grad()
        nn.functional.cross_entropy(model(x[: len(y)]), y).backward()
        router.step(targets=y)
    resumed.load_state_dict(copy.deepcopy(router.state_dict()))
    other.load_state_dict(model.state_dict())
    for r, m in ((router, model), (resumed, other)):
        for y, _ in BATCHES[2:]:
            r.zero_grad()
            nn.functional.cross_entropy(m(x[: len(y)]), y).backward()
            r.step(targets=y)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="group names"):
        resumed.load_state_dict({"frequent": {}})


def test_zero_grad_clears_every_optimizer():
    model = TwoHeads()
    router = lg.route(build(model))
    nn.functional.cross_entropy(model(torch.randn(2, 4, dtype=DT)), torch.tensor([0, 4])).backward()
    router.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_bad_groups_raise_naming_the_problem():
    model = TwoHeads()
    groups = build(model)
    sgd, adam = groups["frequent"][0], groups["rare"][0]
    with pytest.raises(ValueError, match="in both"):
        lg.route({"a": (sgd, [0, 1, 2]), "b": (adam, [2, 3])})
    with pytest.raises(ValueError, match="out of range"):
        lg.route({"a": (sgd, [0, 9])}, num_classes=6)
    with pytest.raises(TypeError, match="Optimizer"):
        lg.route({"a": (object(), [0])})  # type: ignore[dict-item]
    shared = torch.optim.SGD(model.rare.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="owned by"):
        lg.route({"a": (adam, [3]), "b": (shared, [4])})
    router = lg.route(groups)
    with pytest.raises(RuntimeError, match="targets"):
        router.step()


def test_observe_takes_ignore_index_for_segmentation_labels():
    """(N, H, W) class maps with ignore_index=255 (void pixels), validated on the CPU."""
    head_a, head_b = nn.Linear(4, 6, dtype=DT), nn.Linear(4, 6, dtype=DT)
    rules = lg.RowRules(torch.optim.SGD(head_a.parameters(), lr=0.1), rows=head_a, skip_absent=True)
    router = lg.route(
        {"a": (rules, [0, 1, 2]), "b": (torch.optim.SGD(head_b.parameters(), lr=0.1), [3, 4, 5])}
    )
    y = torch.tensor([[[1, 255], [255, 1]], [[2, 2], [255, 255]]])
    with pytest.raises(ValueError, match="class index 255 is out of range"):
        # the default ignore_index (-100) does not cover the void label
        router.observe(y, encoding="index")
    router.observe(y, encoding="index", ignore_index=255)
    expected = [False, True, True, False, False, False]
    assert rules.present.tolist() == expected
    assert lg.rows.present_classes(y, 6, encoding="index", ignore_index=255).tolist() == expected


def _two_groups(frequent: list[int], rare: list[int], num_classes: int = 4) -> lg.Router:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    groups = {
        "frequent": (torch.optim.Adam(a.parameters()), frequent),
        "rare": (torch.optim.Adam(b.parameters()), rare),
    }
    return lg.route(groups, num_classes=num_classes)


def test_state_dict_records_the_groups_and_refuses_other_groups():
    saved = _two_groups([0, 1], [2, 3]).state_dict()
    _two_groups([0, 1], [2, 3]).load_state_dict(copy.deepcopy(saved))  # the same groups load
    with pytest.raises(ValueError, match=r"group 'frequent' was saved owning classes \[0, 1\]"):
        _two_groups([0], [1, 2, 3]).load_state_dict(copy.deepcopy(saved))
    with pytest.raises(ValueError, match="saved with num_classes=4, this router has num_classes=5"):
        _two_groups([0, 1], [2, 3], num_classes=5).load_state_dict(copy.deepcopy(saved))
    # Regrouping on purpose: each optimizer's own state loads (what the error message says).
    moved = _two_groups([0], [1, 2, 3])
    for name in moved:
        moved[name].load_state_dict(copy.deepcopy(saved[name]))


def test_a_state_dict_without_the_group_record_still_loads():
    # States saved before the groups were recorded (0.2) carry types but no classes.
    saved = _two_groups([0, 1], [2, 3]).state_dict()
    meta = next(key for key in saved if key not in ("frequent", "rare"))
    del saved[meta]["classes"], saved[meta]["num_classes"]
    _two_groups([0], [1, 2, 3]).load_state_dict(saved)


def test_classes_are_copies():
    router = _two_groups([0, 1], [2, 3])
    router.classes["rare"][0] = 0
    assert router.classes["rare"].tolist() == [2, 3]
    assert "rare: Adam x 2 classes" in repr(router)
