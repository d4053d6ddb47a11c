"""lg.eql equals autograd of Equalization Loss v1 (Tan et al. 2020) for sigmoid classifiers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-10}


def eql_loss(z, y, freq, threshold, reduction):
    """The published loss: sum_j w_j BCE_j with w_j = 1 - E(r) T(f_j) (1 - y_j)."""
    target = y.clamp(min=0).to(F64)
    foreground = (target.sum(-1, keepdim=True) > 0).to(F64)  # E(r): a sample with an object
    rare = (freq < threshold).to(F64)  # T_lambda(f_j)
    w = 1 - foreground * rare * (1 - target)
    bce = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    return (bce * w).mean() if reduction == "mean" else (bce * w).sum()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_equals_autograd_of_equalization_loss(reduction):
    g = torch.Generator().manual_seed(0)
    freq = torch.tensor([0.3, 0.1, 0.004, 0.02, 0.001, 0.5])
    z = 2 * torch.randn(32, 6, generator=g, dtype=F64)
    y = (torch.rand(32, 6, generator=g) < 0.2).long()
    y[::4] = 0  # background samples keep every negative gradient
    y[1::5, 2] = -1  # unknown entries count as negatives, as in y.clamp(min=0)
    zz = z.clone().requires_grad_(True)
    out = lg.eql(0.01, freq)(zz, y)
    loss = F.binary_cross_entropy_with_logits(out, y.clamp(min=0).to(F64), reduction=reduction)
    (got,) = torch.autograd.grad(loss, zz)
    zr = z.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(eql_loss(zr, y, freq, 0.01, reduction), zr)
    torch.testing.assert_close(got, want, **TOL)
    dropped = (y.clamp(min=0).sum(-1, keepdim=True) > 0) & (freq < 0.01) & (y != 1)
    assert dropped.any() and torch.equal(got[dropped], torch.zeros_like(got[dropped]))


def test_after_mask_unknown_the_unknown_entries_get_nothing():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 3, generator=g, dtype=F64, requires_grad=True)
    y = torch.randint(-1, 2, (8, 3), generator=g)
    out = lg.chain(lg.mask_unknown(), lg.eql(0.5, [0.9, 0.1, 0.6]))(z, y)
    loss = F.binary_cross_entropy_with_logits(out, y.clamp(min=0).to(F64), reduction="sum")
    (got,) = torch.autograd.grad(loss, z)
    known = (y >= 0).to(F64)
    zr = z.detach().clone().requires_grad_(True)
    target = y.clamp(min=0).to(F64)
    fg = (target.sum(-1, keepdim=True) > 0).to(F64)
    w = known * (1 - fg * torch.tensor([0.0, 1.0, 0.0], dtype=F64) * (1 - target))
    ref = (F.binary_cross_entropy_with_logits(zr, target, reduction="none") * w).sum()
    (want,) = torch.autograd.grad(ref, zr)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize(
    ("shape", "class_dim"), [((2, 4, 3, 3), 1), ((2, 5, 4), -1)], ids=["NCHW", "NTC"]
)
def test_dense_and_token_layouts(shape, class_dim):
    g = torch.Generator().manual_seed(2)
    freq = torch.tensor([0.5, 0.001, 0.2, 0.003])
    z = torch.randn(*shape, generator=g, dtype=F64)
    y = (torch.rand(*shape, generator=g) < 0.3).long()
    zz = z.clone().requires_grad_(True)
    out = lg.eql(0.01, freq)(zz, y, class_dim=class_dim)
    (got,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(out, y.to(F64)), zz)
    cd = class_dim % len(shape)
    zr = z.movedim(cd, -1).clone().requires_grad_(True)
    (want,) = torch.autograd.grad(eql_loss(zr, y.movedim(cd, -1), freq, 0.01, "mean"), zr)
    torch.testing.assert_close(got.movedim(cd, -1), want, **TOL)


def test_state_dict_and_errors():
    a, b = lg.eql(0.01, [0.001, 0.5]), lg.eql(0.01, [0.5, 0.5])
    b.load_state_dict(a.state_dict())
    assert b.rare.tolist() == [True, False]
    with pytest.raises(ValueError, match="frequencies must be finite and non-negative"):
        lg.eql(0.01, [-1.0, 0.5])
    with pytest.raises(ValueError, match="freq_threshold must be a finite non-negative"):
        lg.eql(float("nan"), [0.1])
