"""StatefulPolicy: state_dict, reset, no_state_update, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from _policy_helpers import bce_entries, make_model, param_grads

pytestmark = pytest.mark.usefixtures("float64_default")


def test_stateful_state_dict_round_trip_continues_identically():
    model = make_model(c=5)
    a = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=5), lg.monitor(num_classes=5, history=4))
    g = torch.Generator().manual_seed(4)
    batches = [
        (torch.randn(8, 6, generator=g), torch.randint(-1, 2, (8, 5), generator=g))
        for _ in range(6)
    ]
    for x, y in batches[:3]:
        param_grads(model, bce_entries(a(model(x), y), y).sum())
    b = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=5), lg.monitor(num_classes=5, history=4))
    b.load_state_dict(a.state_dict())
    for x, y in batches[3:]:
        ga = param_grads(model, bce_entries(a(model(x), y), y).sum())
        gb = param_grads(model, bce_entries(b(model(x), y), y).sum())
        for u, v in zip(ga, gb, strict=True):
            assert torch.equal(u, v)
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(u, v), k
    assert {"policies.1.pos_grad", "policies.2.history"} <= set(a.state_dict())


def test_reset_restores_initial_statistics():
    policy = lg.eqlv2(num_classes=3)
    z = torch.zeros(2, 3, requires_grad=True)
    policy(z, torch.tensor([0, 1])).sum().backward()
    assert policy.num_updates.item() == 1
    policy.reset()
    assert torch.equal(policy.pos_grad, torch.zeros(3)) and policy.num_updates.item() == 0


def test_no_state_update_keeps_statistics():
    policy = lg.chain(lg.eqlv2(num_classes=3), lg.monitor(3))
    z = torch.zeros(2, 3, requires_grad=True)
    with lg.no_state_update():
        policy(z, torch.tensor([0, 1])).sum().backward()
    assert all(torch.equal(v, torch.zeros_like(v)) for v in policy.state_dict().values())
