"""lg.asymmetric_focus equals autograd of the asymmetric loss, ASL (Ridnik et al. 2021)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-10}


def asl_entries(z, y, gamma_pos, gamma_neg, clip):
    """The published loss per entry, -y (1-p)^g+ log p - (1-y) p_m^g- log(1-p_m)."""
    p = torch.sigmoid(z)
    xs_neg = (1 - p + clip).clamp(max=1)  # 1 - p_m, p_m = max(p - m, 0)
    pos = (1 - p) ** gamma_pos * F.logsigmoid(z)
    neg = (1 - xs_neg) ** gamma_neg * torch.log(xs_neg)
    return -(y * pos + (1 - y) * neg)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "clip"), [(0.0, 4.0, 0.05), (1.0, 2.0, 0.0), (2.0, 1.5, 0.2)]
)
def test_equals_autograd_of_asymmetric_loss(reduction, gamma_pos, gamma_neg, clip):
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(40, 7, generator=g, dtype=F64)
    y = torch.randint(-1, 2, (40, 7), generator=g)  # -1: missing, counted as negative
    t = y.clamp(min=0).to(F64)
    zz = z.clone().requires_grad_(True)
    out = lg.asymmetric_focus(gamma_pos, gamma_neg, clip)(zz, y)
    (got,) = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(out, t, reduction=reduction), zz
    )
    zr = z.clone().requires_grad_(True)
    ref = asl_entries(zr, t, gamma_pos, gamma_neg, clip)
    (want,) = torch.autograd.grad(ref.mean() if reduction == "mean" else ref.sum(), zr)
    torch.testing.assert_close(got, want, **TOL)
    below = (t == 0) & (torch.sigmoid(z) <= clip)
    assert torch.equal(got[below], torch.zeros_like(got[below]))  # shifted away: exact zeros


def test_with_mask_unknown_missing_labels_get_nothing():
    g = torch.Generator().manual_seed(1)
    z = 2 * torch.randn(20, 5, generator=g, dtype=F64)
    y = torch.randint(-1, 2, (20, 5), generator=g)
    t, known = y.clamp(min=0).to(F64), (y >= 0).to(F64)
    zz = z.clone().requires_grad_(True)
    out = lg.chain(lg.mask_unknown(), lg.asymmetric_focus())(zz, y)
    (got,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(out, t), zz)
    zr = z.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((asl_entries(zr, t, 0.0, 4.0, 0.05) * known).mean(), zr)
    torch.testing.assert_close(got, want, **TOL)


def test_bce_weight_and_pos_weight_carry_over_entrywise():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(10, 4, generator=g, dtype=F64)
    t = (torch.rand(10, 4, generator=g) < 0.4).to(F64)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=F64)
    zz = z.clone().requires_grad_(True)
    out = lg.asymmetric_focus(1.0, 3.0, 0.1)(zz, t)
    loss = F.binary_cross_entropy_with_logits(out, t, weight=w, reduction="sum")
    (got,) = torch.autograd.grad(loss, zz)
    zr = z.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((asl_entries(zr, t, 1.0, 3.0, 0.1) * w).sum(), zr)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize(
    ("shape", "class_dim"), [((2, 4, 3, 3), 1), ((2, 5, 4), -1)], ids=["NCHW", "NTC"]
)
def test_dense_and_token_layouts(shape, class_dim):
    g = torch.Generator().manual_seed(3)
    z = 2 * torch.randn(*shape, generator=g, dtype=F64)
    t = (torch.rand(*shape, generator=g) < 0.3).to(F64)
    zz = z.clone().requires_grad_(True)
    out = lg.asymmetric_focus()(zz, t, class_dim=class_dim)
    (got,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(out, t), zz)
    zr = z.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(asl_entries(zr, t, 0.0, 4.0, 0.05).mean(), zr)
    torch.testing.assert_close(got, want, **TOL)


def test_fractional_gammas_and_extreme_logits_stay_finite():
    z = torch.tensor([[-800.0, -30.0, 0.0, 30.0, 800.0]] * 2, dtype=F64, requires_grad=True)
    y = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    for gp, gn, clip in ((0.5, 0.3, 0.05), (0.0, 0.5, 0.0)):
        out = lg.asymmetric_focus(gp, gn, clip)(z, y)
        (g,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(out, y.to(F64)), z)
        assert torch.isfinite(g).all()


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="clip must be in"):
        lg.asymmetric_focus(clip=1.0)
    with pytest.raises(ValueError, match="gamma_neg must be a finite non-negative"):
        lg.asymmetric_focus(gamma_neg=-1.0)
