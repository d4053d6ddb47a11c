"""lg.ldam_drw equals autograd of LDAM (Cao et al. 2019), with deferred class-balanced weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-10}
COUNTS = torch.tensor([500.0, 200.0, 50.0, 10.0, 3.0])


def ldam_loss(z, y, max_margin, s, reduction, weight=None):
    """The published loss: CE(s (z - Delta_y e_y)), Delta_j = C / n_j^(1/4), max Delta = m."""
    delta = COUNTS.double() ** -0.25
    delta = delta * (max_margin / delta.max())
    keep = y != -100
    margin = torch.zeros_like(z)
    margin[keep] = F.one_hot(y[keep], 5).to(F64) * delta
    return F.cross_entropy(s * (z - margin), y, weight=weight, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("max_margin", "s"), [(0.5, 30.0), (0.3, 1.0)])
def test_equals_autograd_of_ldam(reduction, max_margin, s):
    g = torch.Generator().manual_seed(0)
    z = torch.tanh(torch.randn(30, 5, generator=g, dtype=F64))  # cosine logits in [-1, 1]
    y = torch.randint(0, 5, (30,), generator=g)
    y[[0, 7]] = -100
    zz = z.clone().requires_grad_(True)
    out = lg.ldam_drw(COUNTS, max_margin, s)(zz, y)
    (got,) = torch.autograd.grad(F.cross_entropy(out, y, reduction=reduction), zz)
    zr = z.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(ldam_loss(zr, y, max_margin, s, reduction), zr)
    torch.testing.assert_close(got, want, **TOL)


def test_drw_switches_on_the_class_balanced_weights_at_drw_start():
    g = torch.Generator().manual_seed(1)
    beta = 0.999
    w = (1 - beta) / (1 - beta ** COUNTS.double())
    w = (w * 5 / w.sum()).float().double()  # the policy keeps float32 weights
    policy = lg.ldam_drw(COUNTS, drw_start=2, beta=beta)
    for step in range(4):
        z = torch.tanh(torch.randn(12, 5, generator=g, dtype=F64))
        y = torch.randint(0, 5, (12,), generator=g)
        zz = z.clone().requires_grad_(True)
        (got,) = torch.autograd.grad(F.cross_entropy(policy(zz, y), y, reduction="sum"), zz)
        zr = z.clone().requires_grad_(True)
        weight = w if step >= 2 else None
        (want,) = torch.autograd.grad(ldam_loss(zr, y, 0.5, 30.0, "sum", weight), zr)
        torch.testing.assert_close(got, want, **TOL)


def test_state_dict_and_errors():
    a = lg.ldam_drw(COUNTS, drw_start=5)
    b = lg.ldam_drw(COUNTS, drw_start=5)
    z = torch.zeros(2, 5, requires_grad=True)
    F.cross_entropy(a(z, torch.tensor([0, 4])), torch.tensor([0, 4])).backward()
    b.load_state_dict(a.state_dict())
    assert int(b.policies[1].num_steps) == 1
    with pytest.raises(ValueError, match="counts must be positive"):
        lg.ldam_drw([1.0, 0.0])
    with pytest.raises(ValueError, match="beta must be in"):
        lg.ldam_drw([1.0, 2.0], drw_start=1, beta=1.0)


@pytest.mark.parametrize(("shape", "cd"), [((2, 5, 3, 2), 1), ((2, 4, 5), 2)], ids=["NCHW", "NTC"])
def test_dense_and_token_layouts_equal_the_flattened_rows(shape, cd):
    g = torch.Generator().manual_seed(2)
    z = torch.tanh(torch.randn(*shape, generator=g, dtype=F64))
    y = torch.randint(0, 5, shape[:cd] + shape[cd + 1 :], generator=g)
    y.view(-1)[::3] = -100
    zz = z.clone().requires_grad_(True)
    out = lg.ldam_drw(COUNTS)(zz, y, class_dim=cd)
    (got,) = torch.autograd.grad(F.cross_entropy(out.movedim(cd, 1), y), zz)
    flat = z.movedim(cd, -1).reshape(-1, 5).clone().requires_grad_(True)
    (want,) = torch.autograd.grad(ldam_loss(flat, y.reshape(-1), 0.5, 30.0, "mean"), flat)
    torch.testing.assert_close(got.movedim(cd, -1).reshape(-1, 5), want, **TOL)
