"""lg.route(..., always=[...]): a shared trunk's optimizer steps every time (issue 17)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg

DT = torch.float64


class TrunkAndHeads(nn.Module):
    """The usual recipe: a shared trunk and one head per label group (disjoint parameters)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Linear(4, 4, dtype=DT)
        self.frequent = nn.Linear(4, 3, dtype=DT)
        self.rare = nn.Linear(4, 2, dtype=DT)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.trunk(x))
        return torch.cat([self.frequent(h), self.rare(h)], dim=1)


def optimizers(m: TrunkAndHeads) -> dict[str, torch.optim.Optimizer]:
    return {
        "trunk": torch.optim.SGD(m.trunk.parameters(), lr=0.1, momentum=0.9),
        "frequent": torch.optim.SGD(m.frequent.parameters(), lr=0.1, momentum=0.9),
        "rare": torch.optim.AdamW(m.rare.parameters(), lr=0.01, weight_decay=0.1),
    }


def router_for(m: TrunkAndHeads) -> lg.Router:
    o = optimizers(m)
    return lg.route(
        {"frequent": (o["frequent"], [0, 1, 2]), "rare": (o["rare"], [3, 4])},
        always=[o["trunk"]],
    )


BATCHES = [
    torch.tensor([0, 3, 1]),
    torch.tensor([0, 1, 1]),
    torch.tensor([4, 4]),
    torch.tensor([2]),
]


def test_trunk_steps_every_time_heads_only_with_their_classes():
    """Against the plain optimizers stepped by hand: the trunk always, a head iff one of its
    classes is in the batch."""
    model, plain_model = TrunkAndHeads(), TrunkAndHeads()
    router = router_for(model)
    plain = optimizers(plain_model)
    x = torch.randn(3, 4, dtype=DT)
    for t, y in enumerate(BATCHES):
        xb = x[: len(y)] + t
        router.zero_grad()
        for opt in plain.values():
            opt.zero_grad()
        for m in (model, plain_model):
            nn.functional.cross_entropy(m(xb), y).backward()
        trunk_before = model.trunk.weight.detach().clone()
        router.step(targets=y)
        plain["trunk"].step()
        if bool((y < 3).any()):
            plain["frequent"].step()
        if bool((y >= 3).any()):
            plain["rare"].step()
        assert not torch.equal(model.trunk.weight, trunk_before)
        for a, b in zip(model.parameters(), plain_model.parameters(), strict=True):
            assert torch.equal(a, b)


def test_always_is_checked():
    model = TrunkAndHeads()
    o = optimizers(model)
    groups = {"frequent": (o["frequent"], [0, 1, 2]), "rare": (o["rare"], [3, 4])}
    with pytest.raises(TypeError, match="always must be a list"):
        lg.route(groups, always=o["trunk"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"always\[0\]"):
        lg.route(groups, always=[object()])  # type: ignore[list-item]
    overlapping = torch.optim.SGD(model.rare.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="owned by"):
        lg.route(groups, always=[overlapping])
    with pytest.raises(TypeError, match="closure"):
        lg.route(groups, always=[torch.optim.LBFGS(model.trunk.parameters())])
    assert "always: SGD" in repr(lg.route(groups, always=[o["trunk"]]))


def test_state_dict_round_trip_with_always():
    model, other = TrunkAndHeads(), TrunkAndHeads()
    router, resumed = router_for(model), router_for(other)
    x = torch.randn(3, 4, dtype=DT)
    for y in BATCHES[:2]:
        router.zero_grad()
        nn.functional.cross_entropy(model(x[: len(y)]), y).backward()
        router.step(targets=y)
    resumed.load_state_dict(copy.deepcopy(router.state_dict()))
    other.load_state_dict(model.state_dict())
    for r, m in ((router, model), (resumed, other)):
        for y in BATCHES[2:]:
            r.zero_grad()
            nn.functional.cross_entropy(m(x[: len(y)]), y).backward()
            r.step(targets=y)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    without = lg.route({"frequent": (optimizers(other)["frequent"], [0, 1, 2])}, num_classes=5)
    sd = router.state_dict()
    with pytest.raises(ValueError, match="always"):
        without.load_state_dict(
            {"frequent": sd["frequent"], "__labelgrad_route__": sd["__labelgrad_route__"]}
        )
