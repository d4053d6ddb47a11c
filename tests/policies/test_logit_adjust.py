"""lg.logit_adjust equals autograd of the logit-adjusted cross-entropy (Menon et al. 2021)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-10}


def la_loss(z, y, prior, tau, reduction):
    """The published loss: softmax cross-entropy on z + tau log(pi), pi the normalised prior."""
    pi = prior / prior.sum()
    return F.cross_entropy(z + tau * torch.log(pi), y, reduction=reduction)


def policy_grad(policy, z, y, reduction, **kw):
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(policy(z, y, **kw), y, reduction=reduction), z)
    return g


def ref_grad(loss_fn, z):
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(z), z)
    return g


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("tau", [0.0, 1.0, 1.7])
def test_equals_autograd_of_logit_adjusted_loss(reduction, tau):
    g = torch.Generator().manual_seed(0)
    prior = torch.tensor([500.0, 120.0, 30.0, 7.0, 1.0], dtype=F64)
    z = 3 * torch.randn(64, 5, generator=g, dtype=F64)
    y = torch.randint(0, 5, (64,), generator=g)
    y[[3, 10, 11]] = -100  # ignore_index
    got = policy_grad(lg.logit_adjust(prior, tau=tau), z, y, reduction)
    want = ref_grad(lambda z: la_loss(z, y, prior, tau, reduction), z)
    torch.testing.assert_close(got, want, **TOL)
    assert torch.equal(got[[3, 10, 11]], torch.zeros(3, 5, dtype=F64))


@pytest.mark.parametrize(
    ("shape", "class_dim"), [((4, 5, 3, 2), 1), ((3, 7, 5), -1)], ids=["NCHW", "NTC"]
)
def test_dense_and_token_layouts(shape, class_dim):
    g = torch.Generator().manual_seed(1)
    prior = torch.tensor([9.0, 5.0, 3.0, 2.0, 1.0], dtype=F64)
    z = torch.randn(*shape, generator=g, dtype=F64)
    cd = class_dim % len(shape)
    y_shape = shape[:cd] + shape[cd + 1 :]
    y = torch.randint(0, 5, y_shape, generator=g)
    y.view(-1)[::5] = -100
    policy = lg.logit_adjust(prior)
    zc = z.movedim(cd, 1)  # F.cross_entropy wants the classes at dim 1
    got = policy_grad(policy, zc, y, "mean") if cd == 1 else None
    if cd != 1:
        zz = z.clone().requires_grad_(True)
        loss = F.cross_entropy(policy(zz, y, class_dim=-1).movedim(-1, 1), y)
        (got,) = torch.autograd.grad(loss, zz)
        got = got.movedim(cd, 1)
    shift = torch.log(prior / prior.sum()).view(1, 5, *([1] * (len(shape) - 2)))
    want = ref_grad(lambda z: F.cross_entropy(z + shift, y), zc)
    torch.testing.assert_close(got, want, **TOL)


def test_soft_and_one_hot_targets_follow_the_same_loss():
    g = torch.Generator().manual_seed(2)
    prior = torch.tensor([4.0, 2.0, 1.0], dtype=F64)
    z = torch.randn(16, 3, generator=g, dtype=F64)
    soft = torch.softmax(torch.randn(16, 3, generator=g, dtype=F64), -1)
    soft = soft.float().double()  # Targets.values holds float32: compare on representable ones
    for q in (soft, F.one_hot(torch.randint(0, 3, (16,), generator=g), 3).to(F64)):
        got = policy_grad(lg.logit_adjust(prior), z, q, "mean")
        want = ref_grad(lambda z, q=q: la_loss(z, q, prior, 1.0, "mean"), z)
        torch.testing.assert_close(got, want, **TOL)


def test_per_sample_weights_before_it_carry_over():
    """chain(class_weights(w), logit_adjust): the weighted logit-adjusted loss (sum)."""
    g = torch.Generator().manual_seed(3)
    prior = torch.tensor([10.0, 3.0, 1.0], dtype=F64)
    w = torch.tensor([0.5, 2.0, 3.0], dtype=F64)
    z = torch.randn(12, 3, generator=g, dtype=F64)
    y = torch.randint(0, 3, (12,), generator=g)
    policy = lg.chain(lg.class_weights(w), lg.logit_adjust(prior))
    got = policy_grad(policy, z, y, "sum")
    pi = prior / prior.sum()
    want = ref_grad(lambda z: F.cross_entropy(z + torch.log(pi), y, weight=w, reduction="sum"), z)
    torch.testing.assert_close(got, want, **TOL)


def test_state_dict_round_trip_and_errors():
    policy = lg.logit_adjust([3.0, 1.0], tau=0.5)
    other = lg.logit_adjust([1.0, 1.0], tau=0.5)
    other.load_state_dict(policy.state_dict())
    assert torch.equal(other.prior, torch.tensor([3.0, 1.0]))
    with pytest.raises(ValueError, match="prior must be positive"):
        lg.logit_adjust([1.0, 0.0])
    with pytest.raises(ValueError, match="tau must be a finite non-negative"):
        lg.logit_adjust([1.0, 1.0], tau=-1.0)
    with pytest.raises(ValueError, match="num_classes=2"):
        lg.logit_adjust([1.0, 1.0])(torch.zeros(2, 3, requires_grad=True), torch.tensor([0, 1]))


def test_confident_predictions_keep_the_scale_exact():
    """A rare class predicted with a logit gap of ~30: the CE gradient of its row is ~1e-13
    (its target entry all cancellation) while the adjusted gradient is of order 1, so the scale
    must be read to full relative precision from a nearly vanishing gradient.
    """
    prior = torch.tensor([1000.0, 1000.0, 1000.0, 1.0], dtype=F64)
    gaps = torch.linspace(25.0, 34.0, 10, dtype=F64)
    z = torch.zeros(10, 4, dtype=F64)
    z[:, 3] = gaps
    y = torch.full((10,), 3)
    for reduction in ("mean", "sum"):
        got = policy_grad(lg.logit_adjust(prior, tau=4.0), z, y, reduction)
        want = ref_grad(lambda z, r=reduction: la_loss(z, y, prior, 4.0, r), z)
        assert want.abs().max() > 0.01  # the surrogate is far from the vanishing CE gradient
        torch.testing.assert_close(got, want, **TOL)
