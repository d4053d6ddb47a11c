"""Policy weights keep the dtype they are given (issue 12, item 7), as CrossEntropyLoss does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import labelgrad as lg


def weights64() -> torch.Tensor:
    # Values that float32 cannot hold: rounding them would show at ~1e-8.
    return torch.tensor([0.1, 1 / 3, 2.0 + 1e-12, 0.7], dtype=torch.float64)


def test_class_weights_keep_float64_and_match_float64_autograd():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 2, (6, 4), generator=g)
    w = weights64()
    policy = lg.class_weights(w)
    assert policy.weight.dtype == torch.float64
    (got,) = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(policy(z, y), y.double(), reduction="sum"), z
    )
    ref = F.binary_cross_entropy_with_logits(z, y.double(), weight=w, reduction="sum")
    (want,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def test_class_weights_indices_float64_match_cross_entropy_weight():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (7,), generator=g)
    w = weights64()
    (got,) = torch.autograd.grad(F.cross_entropy(lg.class_weights(w)(z, y), y, reduction="sum"), z)
    (want,) = torch.autograd.grad(F.cross_entropy(z, y, weight=w, reduction="sum"), z)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def test_pos_neg_weights_keep_float64():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 2, (5, 4), generator=g)
    p, n = weights64(), weights64().flip(0)
    policy = lg.pos_neg_weights(p, n)
    assert policy.pos.dtype == policy.neg.dtype == torch.float64
    loss = F.binary_cross_entropy_with_logits(policy(z, y), y.double(), reduction="none")
    (got,) = torch.autograd.grad(loss.sum(), z)
    weight = torch.where(y == 1, p, n)
    ref = F.binary_cross_entropy_with_logits(z, y.double(), reduction="none") * weight
    (want,) = torch.autograd.grad(ref.sum(), z)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def test_to_still_converts_and_float32_stays_float32():
    policy = lg.class_weights(weights64())
    assert policy.to(torch.float32).weight.dtype == torch.float32
    assert lg.class_weights(torch.ones(3)).weight.dtype == torch.float32
    assert lg.class_weights([1, 2]).weight.dtype == torch.get_default_dtype()
