"""Policies on empty, fully masked and non-finite batches."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from _policy_helpers import bce_entries, make_model, param_grads

pytestmark = pytest.mark.usefixtures("float64_default")


@pytest.mark.parametrize("targets", [torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)])
def test_empty_batch_gives_zero_gradient(targets):
    model = make_model()
    policy = lg.chain(
        lg.mask_unknown(),
        lg.class_weights(torch.ones(4)),
        lg.eqlv2(num_classes=4),
        lg.clip_per_class(1.0),
        lg.clip_per_sample(1.0),
        lg.monitor(4, history=2),
    )
    z = policy(model(torch.zeros(0, 6)), targets)
    grads = param_grads(model, z.sum())
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    assert all(torch.isfinite(v.float()).all() for v in policy.state_dict().values())


def test_all_masked_batch_gives_exact_zero_gradient():
    model = make_model()
    y = torch.full((5, 4), -1)
    policy = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=4), lg.clip_per_class(1.0))
    grads = param_grads(model, bce_entries(policy(model(torch.randn(5, 6)), y), y).sum())
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_non_finite_gradient_passes_through_and_spares_statistics():
    policy = lg.chain(lg.eqlv2(num_classes=3), lg.clip_per_class(1.0), lg.clip_per_sample(1.0))
    eq = policy.policies[0]
    z = torch.zeros(2, 3, requires_grad=True)
    up = torch.tensor([[float("inf"), 1.0, 1.0], [1.0, 1.0, 1.0]])
    (g,) = torch.autograd.grad(policy(z, torch.tensor([0, 1])), z, up)
    assert torch.isinf(g[0, 0])
    assert eq.num_updates.item() == 0 and torch.equal(eq.pos_grad, torch.zeros(3))
