"""``GradScaler.step(router)`` steps a router as the plain route does (issue 15)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg


def test_grad_scaler_steps_a_router_like_the_plain_route():
    """Before: AttributeError (no param_groups). Now scaler.step(router) unscales every
    optimizer's gradients, skips everything on inf, and otherwise routes."""

    def build(seed: int) -> tuple[nn.Module, lg.Router]:
        torch.manual_seed(seed)
        model = nn.ModuleDict(
            {"trunk": nn.Linear(3, 3), "a": nn.Linear(3, 2), "b": nn.Linear(3, 2)}
        )
        router = lg.route(
            {
                "a": (torch.optim.Adam(model["a"].parameters(), lr=0.1), [0, 1]),
                "b": (torch.optim.SGD(model["b"].parameters(), lr=0.1, momentum=0.9), [2, 3]),
            },
            always=[torch.optim.SGD(model["trunk"].parameters(), lr=0.1)],
        )
        return model, router

    def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        h = model["trunk"](x).relu()
        return nn.functional.cross_entropy(torch.cat([model["a"](h), model["b"](h)], 1), y)

    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 0])  # no class of "b"
    scaled, router = build(0)
    plain, ref = build(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    router.zero_grad()
    scaler.scale(loss(scaled, x, y)).backward()
    router.observe(y)
    scaler.step(router)
    scaler.update()
    ref.zero_grad()
    loss(plain, x, y).backward()
    ref.step(targets=y)
    for p, q in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    # inf: nothing steps, and zero_grad forgets the batch's classes
    before = [p.detach().clone() for p in scaled.parameters()]
    router.zero_grad()
    scaler.scale(loss(scaled, x, y)).backward()
    assert scaled["trunk"].weight.grad is not None
    scaled["trunk"].weight.grad[0, 0] = float("inf")
    router.observe(y)
    scaler.step(router)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(scaled.parameters(), before, strict=True))
    router.zero_grad()
    with pytest.raises(RuntimeError, match="targets"):
        router.step()
