"""A hostile review of the policy level (HOSTILE.md), written against the public API only.

Each test builds what a user would pass and compares with an independent float64 reference
written here (autograd of the reweighted or published loss), or expects a one-line error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg

F64 = torch.float64


def clip_reference(g: torch.Tensor, max_norm: float, dims: tuple[int, ...]) -> torch.Tensor:
    g = g.to(F64)
    norm = g.square().sum(dim=dims, keepdim=True).sqrt()
    return g * torch.clamp(max_norm / norm, max=1.0)


# --- 3. Precision and magnitude ------------------------------------------------------------


@pytest.mark.parametrize("which", ["sample", "class"])
@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1.0, 1e20, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clipping_is_exact_at_every_representable_magnitude(which, magnitude, dtype):
    """The squares of 1e20 overflow float32 and those of 1e-20 vanish: the norm must not."""
    g = torch.Generator().manual_seed(0)
    up = (torch.randn(5, 3, generator=g, dtype=F64) * magnitude).to(dtype)
    max_norm = 0.5 * magnitude
    policy = lg.clip_per_sample(max_norm) if which == "sample" else lg.clip_per_class(max_norm)
    z = torch.zeros(5, 3, dtype=dtype, requires_grad=True)
    (got,) = torch.autograd.grad(policy(z), z, up)
    want = clip_reference(up, max_norm, (1,) if which == "sample" else (0,))
    rtol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.to(F64), want, rtol=rtol, atol=0.0)
    # every group was over the threshold here, so each ends at norm max_norm
    dim = 1 if which == "sample" else 0
    norms = got.to(F64).square().sum(dim).sqrt()
    torch.testing.assert_close(norms, torch.full_like(norms, max_norm), rtol=rtol * 10, atol=0.0)


def test_clipping_leaves_a_group_with_inf_or_nan_untouched():
    up = torch.tensor([[float("inf"), 1.0, 2.0], [3.0, 4.0, 0.0], [float("nan"), 1.0, 1.0]])
    z = torch.zeros(3, 3, requires_grad=True)
    (got,) = torch.autograd.grad(lg.clip_per_sample(1.0)(z), z, up)
    torch.testing.assert_close(got[0], up[0], equal_nan=True)
    torch.testing.assert_close(got[2], up[2], equal_nan=True)
    torch.testing.assert_close(got[1], torch.tensor([0.6, 0.8, 0.0]))


# --- 5. Labels: soft values exactly at the prediction, one class ------------------------------


def asl_reference(z: torch.Tensor, y: torch.Tensor, gp: float, gn: float, clip: float):
    p = torch.sigmoid(z)
    pm = (p - clip).clamp(min=0)
    return -y * (1 - p) ** gp * torch.log(p) - (1 - y) * pm**gn * torch.log(1 - pm)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_asymmetric_focus_soft_label_at_its_prediction_takes_the_shared_scale(dtype, reduction):
    """BCE's gradient vanishes where sigmoid(z) = y; the published ASL gradient does not."""
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(4, 3, generator=g, dtype=F64).to(dtype)
    q = torch.rand(4, 3, generator=g, dtype=F64).to(dtype)
    z0[0, 0] = 0.0
    q[0, 0] = 0.5  # exactly sigmoid(0)
    q[2, 1] = torch.sigmoid(z0[2, 1])  # a soft target equal to the prediction
    z = z0.clone().requires_grad_()
    out = lg.asymmetric_focus(1.0, 2.0, 0.05)(z, q)
    (got,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(out, q, reduction=reduction), z)
    zd = z0.to(F64).requires_grad_()
    loss = asl_reference(zd, q.to(F64), 1.0, 2.0, 0.05)
    (want,) = torch.autograd.grad(loss.mean() if reduction == "mean" else loss.sum(), zd)
    assert want[0, 0] != 0 and want[2, 1] != 0
    tol = 1e-10 if dtype == F64 else 1e-5
    torch.testing.assert_close(got.to(F64), want, rtol=tol, atol=tol)


def test_asymmetric_focus_soft_label_at_its_prediction_without_a_shared_scale_is_refused():
    z = torch.tensor([[0.0, 1.0, -1.0]], dtype=F64, requires_grad=True)
    q = torch.tensor([[0.5, 0.2, 0.9]], dtype=F64)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=F64)  # per-entry weights: no shared scale
    out = lg.asymmetric_focus()(z, q)
    with pytest.raises(ValueError, match="cannot read the loss scale") as info:
        F.binary_cross_entropy_with_logits(out, q, weight=w).backward()
    assert "\n" not in str(info.value) and "entry" in str(info.value)


def test_asymmetric_focus_saturated_hard_label_keeps_a_zero_gradient_under_weights():
    """A hard label where sigmoid(z) rounds to it is not refused, whatever the weights."""
    z = torch.tensor([[40.0, 0.3, -0.2]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 1.0]])
    w = torch.tensor([1.0, 2.0, 3.0])
    out = lg.asymmetric_focus(0.0, 0.0, 0.0)(z, y)  # the BCE gradient itself
    (got,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(out, y, weight=w), z)
    zz = z.detach().requires_grad_()
    (want,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(zz, y, weight=w), zz)
    torch.testing.assert_close(got, want)


SOFTMAX_ONE_CLASS = {
    "logit_adjust": lambda: lg.logit_adjust([1.0]),
    "seesaw": lambda: lg.seesaw(1),
    "ldam_drw": lambda: lg.ldam_drw([5.0], drw_start=0),
    "labels_trick": lambda: lg.labels_trick(),
}


@pytest.mark.parametrize("name", sorted(SOFTMAX_ONE_CLASS))
def test_softmax_surrogates_with_one_class_give_the_zero_gradient(name):
    """Softmax over one class is 1: CE and every published softmax loss have zero gradient."""
    z = torch.randn(3, 1, dtype=F64, requires_grad=True)
    y = torch.zeros(3, dtype=torch.long)
    (got,) = torch.autograd.grad(F.cross_entropy(SOFTMAX_ONE_CLASS[name]()(z, y), y), z)
    assert torch.equal(got, torch.zeros_like(got))
    # a second loss term on the same logits is still refused
    with pytest.raises(ValueError, match="not one"):
        out = SOFTMAX_ONE_CLASS[name]()(z, y)
        (F.cross_entropy(out, y) + out.sum()).backward()


# --- per_label_losses --------------------------------------------------------------------------


def test_per_label_losses_ce_with_partial_multi_hot_is_the_documented_sum():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g, dtype=F64)
    y = torch.randint(-1, 2, (6, 4), generator=g)
    got = lg.per_label_losses(z, y, loss="ce")
    want = -(y.clamp(min=0) * torch.log_softmax(z, 1)).sum(0) / 6  # unknown entries: nothing
    assert got.dtype == F64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_per_label_losses_ntc_with_class_dim_minus_one_sums_to_the_mean_loss():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 4, generator=g, dtype=F64)
    y = torch.randint(0, 4, (2, 3), generator=g)
    y[0, 1] = -100
    got = lg.per_label_losses(z, y, loss="ce", class_dim=-1)
    torch.testing.assert_close(got.sum(), F.cross_entropy(z.transpose(1, 2), y), rtol=1e-12, atol=0)


def test_per_label_losses_callable_of_the_wrong_shape_names_the_class_last_layout():
    z = torch.randn(2, 4, 3)  # (N, C, L): the callable sees (N, L, C)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) \(class axis last") as info:
        lg.per_label_losses(z, torch.randint(0, 2, (2, 4, 3)), loss=lambda a, b: a.sum())
    assert "\n" not in str(info.value)


# --- 2. Graphs: torch.func transforms ----------------------------------------------------------

STATEFUL = {
    "eqlv2": lambda: lg.eqlv2(4),
    "monitor": lambda: lg.monitor(4),
    "schedule": lambda: lg.schedule(lg.class_weights([1.0, 2.0, 3.0, 4.0]), start_step=1),
    "chain": lambda: lg.chain(lg.mask_unknown(), lg.eqlv2(4)),
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_stateful_policy_under_torch_func_is_refused_clearly_or_exact_without_updates(name):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g, dtype=F64)
    y = torch.randint(0, 2, (6, 4), generator=g)
    policy = STATEFUL[name]()

    def loss(zz: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(policy(zz, y), y.to(F64), reduction="sum")

    with pytest.raises(RuntimeError, match=r"no_state_update\(\)") as info:
        torch.func.grad(loss)(z)
    assert "\n" not in str(info.value)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with lg.no_state_update():
        got = torch.func.grad(loss)(z)
    zz = z.clone().requires_grad_()
    with lg.no_state_update():
        (want,) = torch.autograd.grad(loss(zz), zz)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    for k, v in policy.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- 4. State: reset of composed policies ------------------------------------------------------

COMPOSED = {
    "chain": (lambda: lg.chain(lg.mask_unknown(), lg.eqlv2(4), lg.monitor(4)), "sigmoid"),
    "schedule": (lambda: lg.schedule(lg.eqlv2(4), start_step=1, end_step=3), "sigmoid"),
    "ldam_drw": (lambda: lg.ldam_drw([8.0, 4.0, 2.0, 1.0], s=4.0, drw_start=1), "softmax"),
    "seesaw_chain": (lambda: lg.chain(lg.seesaw(4), lg.clip_per_sample(1.0)), "softmax"),
}


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_reset_of_a_composed_policy_gives_a_fresh_one(name):
    make, kind = COMPOSED[name]
    g = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(3):
        z = torch.randn(6, 4, generator=g, dtype=F64)
        y = torch.randint(0, 4, (6,), generator=g)
        batches.append((z, y if kind == "softmax" else F.one_hot(y, 4)))

    def grads(policy):
        out = []
        for z0, y in batches:
            z = z0.clone().requires_grad_()
            o = policy(z, y)
            loss = F.cross_entropy(o, y) if kind == "softmax" else o.sigmoid().sum()
            out.append(torch.autograd.grad(loss, z)[0])
        return out

    used, fresh = make(), make()
    grads(used)
    used.reset()
    for k, v in fresh.state_dict().items():
        assert torch.equal(used.state_dict()[k], v), k
    for a, b in zip(grads(used), grads(fresh), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: lg.class_weights([]), "weight"),
        (lambda: lg.pos_neg_weights(pos=[]), "pos"),
        (lambda: lg.logit_adjust([]), "prior"),
        (lambda: lg.ldam_drw([]), "counts"),
        (lambda: lg.eql(0.1, []), "frequencies"),
    ],
)
def test_empty_class_vectors_are_refused_at_construction(build, name):
    with pytest.raises(ValueError, match=f"^{name} must have one entry per class") as info:
        build()
    assert "\n" not in str(info.value)
