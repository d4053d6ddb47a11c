"""The gate and the Policy base class: exactness under autograd, vmap, batched VJPs, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from _policy_helpers import TOL, bce_entries, make_model

pytestmark = pytest.mark.usefixtures("float64_default")


def test_identity_policy_passes_gradcheck():
    class Identity(lg.Policy):
        requires_targets = False
        supports_double_backward = True  # the identity on values: a second pass is harmless

        def transform(self, grad, ctx):
            return grad

    z = torch.randn(3, 4, 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: Identity()(t), (z,))
    assert torch.autograd.gradgradcheck(lambda t: Identity()(t) ** 2, (z,))


def test_backward_equals_declared_transform_of_upstream():
    torch.manual_seed(0)
    z = torch.randn(5, 3, requires_grad=True)
    y = torch.randint(0, 2, (5, 3))
    w = torch.tensor([0.5, 1.0, 2.0])
    up = torch.randn(5, 3)
    (g,) = torch.autograd.grad(lg.class_weights(w)(z, y), z, up)
    assert torch.equal(g, up * w)


def test_forward_returns_logits_unchanged():
    z = torch.randn(4, 3, requires_grad=True)
    out = lg.chain(lg.mask_unknown(), lg.clip_per_class(0.1))(z, torch.tensor([0, 1, 2, -100]))
    assert torch.equal(out, z)
    with torch.no_grad():
        assert lg.mask_unknown()(z, torch.tensor([0, 1, 2, 0])) is z


def test_vmap_grad_per_sample_gradients():
    from torch.func import functional_call, grad, vmap

    model = make_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    policy = lg.chain(lg.mask_unknown(), lg.class_weights([1.0, 2.0, 0.5, 0.0]))
    x = torch.randn(5, 6)
    y = torch.randint(-1, 2, (5, 4))

    def loss(p, xi, yi):
        z = policy(functional_call(model, p, (xi[None],)), yi[None])
        return bce_entries(z, yi[None]).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(5):
        ref = torch.autograd.grad(
            loss(dict(model.named_parameters()), x[i], y[i]), list(model.parameters())
        )
        torch.testing.assert_close(per_sample["2.weight"][i], ref[2], **TOL)


def test_batched_vjp_through_gate_is_exact():
    model = make_model()
    x = torch.randn(6, 6)
    y = torch.randint(-1, 2, (6, 4))
    policy = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=4))
    losses = bce_entries(policy(model(x), y), y).sum(0)
    weight = model[0].weight
    with lg.no_state_update():
        jac = torch.autograd.grad(
            losses, weight, torch.eye(4), retain_graph=True, is_grads_batched=True
        )[0]
        loop = torch.stack(
            [torch.autograd.grad(losses[k], weight, retain_graph=True)[0] for k in range(4)]
        )
    torch.testing.assert_close(jac, loop, **TOL)


def test_user_policy_in_a_few_lines():
    class NegativesOnly(lg.Policy):
        def transform(self, grad, ctx):
            return torch.where(ctx.require_targets(self).positive, torch.zeros_like(grad), grad)

    z = torch.zeros(2, 3, requires_grad=True)
    NegativesOnly()(z, torch.tensor([0, 2])).sum().backward()
    assert z.grad.tolist() == [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
