"""Issue 20 (HOSTILE.md) at the policy level, parametrized over every public policy.

The table below names one factory per public policy factory of ``lg.policies``; a test fails if
one is missing, so that a new policy is covered by every test here.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg

C = 4
F64 = torch.float64
W4 = [0.5, 1.0, 2.0, 3.0]

# name -> (factory, loss family): "softmax" policies sit under F.cross_entropy with class
# indices, the others under binary cross-entropy with multi-hot labels.
POLICIES = {
    "asymmetric_focus": (lambda: lg.asymmetric_focus(1.0, 2.0, 0.05), "sigmoid"),
    "chain": (lambda: lg.chain(lg.mask_unknown(), lg.class_weights(W4)), "sigmoid"),
    "class_weights": (lambda: lg.class_weights(W4), "sigmoid"),
    "clip_per_class": (lambda: lg.clip_per_class(0.05), "sigmoid"),
    "clip_per_sample": (lambda: lg.clip_per_sample(0.05), "sigmoid"),
    "eql": (lambda: lg.eql(0.1, [0.5, 0.3, 0.05, 0.01]), "sigmoid"),
    "eqlv2": (lambda: lg.eqlv2(C), "sigmoid"),
    "freeze_classes": (lambda: lg.freeze_classes([1]), "sigmoid"),
    "labels_trick": (lambda: lg.labels_trick(), "softmax"),
    "ldam_drw": (lambda: lg.ldam_drw([8.0, 4.0, 2.0, 1.0], s=4.0, drw_start=0), "softmax"),
    "logit_adjust": (lambda: lg.logit_adjust([8.0, 4.0, 2.0, 1.0]), "softmax"),
    "mask": (lambda: lg.mask(torch.tensor([True, False, True, True])), "sigmoid"),
    "mask_unknown": (lambda: lg.mask_unknown(), "sigmoid"),
    "monitor": (lambda: lg.monitor(C), "sigmoid"),
    "pos_neg_weights": (lambda: lg.pos_neg_weights(2.0, 0.5), "sigmoid"),
    "schedule": (lambda: lg.schedule(lg.class_weights(W4), start_step=0), "sigmoid"),
    "seesaw": (lambda: lg.seesaw(C), "softmax"),
}
SURROGATES = ["asymmetric_focus", "labels_trick", "ldam_drw", "logit_adjust", "seesaw"]
SOFTMAX_SURROGATES = [n for n in SURROGATES if POLICIES[n][1] == "softmax"]


def public_factories() -> set[str]:
    names = set()
    for name in lg.policies.__all__:
        obj = getattr(lg.policies, name)
        if name[0].islower() and inspect.isfunction(obj):
            ret = inspect.signature(obj).return_annotation
            if name not in ("no_state_update", "state_updates_enabled"):
                names.add(name)
                assert ret != "None", name
    return names


def test_every_public_policy_is_in_the_table():
    assert set(POLICIES) == public_factories()
    for name in SURROGATES:  # the table's surrogates are the replacing policies
        assert isinstance(lg.chain(POLICIES[name][0]()).members()[0], lg.policies.Policy)
    assert {"labels_trick", "LabelsTrick"} <= set(lg.__all__) & set(lg.policies.__all__)


def batch(kind: str, dtype: torch.dtype = F64, n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, C, generator=g, dtype=dtype)
    if kind == "softmax":
        y = torch.randint(0, C, (n,), generator=g)
        y[-1] = -100
        return z, y, lambda out: F.cross_entropy(out, y)
    y = torch.randint(0, 2, (n, C), generator=g)
    return z, y, lambda out: F.binary_cross_entropy_with_logits(out, y.to(out.dtype))


# --- 2/4. The gate's output may be changed in place: the policy acts on dL/d(out) -------------


def temperature_grad(name: str, in_place: bool) -> torch.Tensor:
    make, kind = POLICIES[name]
    z0, y, loss = batch(kind)
    z = z0.clone().requires_grad_()
    out = make()(z, y)
    out = out.div_(2.0) if in_place else out / 2.0
    (g,) = torch.autograd.grad(loss(out), z)
    assert torch.equal(z, z0)  # the caller's logits are not touched
    return g


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_in_place_temperature_equals_the_out_of_place_one(name):
    """``out = policy(z, y); out.div_(T)`` is ``policy(z, y) / T``: the policy sees dL/d(out)."""
    if POLICIES[name][1] == "softmax":  # a softmax surrogate refuses a temperature, both ways
        for in_place in (True, False):
            with pytest.raises(ValueError, match="temperature"):
                temperature_grad(name, in_place)
        return
    got, want = temperature_grad(name, True), temperature_grad(name, False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", SOFTMAX_SURROGATES)
def test_in_place_shift_keeps_a_softmax_surrogate_exact(name):
    """Cross-entropy ignores a constant shift: an in-place add_ leaves the surrogate gradient."""
    make, kind = POLICIES[name]
    z0, y, loss = batch(kind)
    grads = []
    for shift in (True, False):
        z = z0.clone().requires_grad_()
        out = make()(z, y)
        if shift:
            out.add_(3.0)
        grads.append(torch.autograd.grad(loss(out), z)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-15)


# --- 3. Precision: one dtype rule for every buffer built from a user tensor ------------------

# name -> (factory of a float64 vector argument, the buffers built from it)
VECTOR_ARGS = {
    "logit_adjust": (lambda v: lg.logit_adjust(v), ["prior"]),
    "ldam_drw": (lambda v: lg.ldam_drw(v, drw_start=0), ["policies.0.counts"]),
    "class_weights": (lambda v: lg.class_weights(v), ["weight"]),
    "pos_neg_weights": (lambda v: lg.pos_neg_weights(v, v), ["pos", "neg"]),
    "eql": (lambda v: lg.eql(1e-30, v), []),  # a bool buffer, compared in the given dtype
}


def test_every_constructor_taking_a_float_vector_is_in_the_dtype_table():
    takes_vector = {
        name
        for name in POLICIES
        if any(
            ("Tensor" in str(p.annotation) or "Weights" in str(p.annotation))
            and "Iterable[int]" not in str(p.annotation)
            for p in inspect.signature(getattr(lg, name)).parameters.values()
        )
    }
    assert takes_vector - {"mask"} == set(VECTOR_ARGS)  # mask takes a bool vector


@pytest.mark.parametrize("name", sorted(VECTOR_ARGS))
@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 4.0], [1e-50, 1.0, 1e-30, 2.0], [1e39] * 4])
def test_float64_vectors_stay_float64_and_to_converts(name, values):
    make, buffers = VECTOR_ARGS[name]
    policy = make(torch.tensor(values, dtype=F64))
    state = dict(policy.named_buffers())
    for b in buffers:
        assert state[b].dtype == F64, b
        assert state[b].tolist() == values or name == "ldam_drw"
    if name == "ldam_drw":  # the DRW class weights too
        weights = [m for m in policy.modules() if isinstance(m, lg.ClassWeights)]
        assert weights[0].weight.dtype == F64 and torch.isfinite(weights[0].weight).all()
    for b in buffers:
        assert dict(policy.to(torch.float32).named_buffers())[b].dtype == torch.float32


def test_float64_prior_of_1e_50_is_exact():
    prior = torch.tensor([1e-50, 1.0, 1e-30], dtype=F64)
    z = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1, 0])
    zz = z.clone().requires_grad_()
    F.cross_entropy(lg.logit_adjust(prior)(zz, y), y).backward()
    w = z.clone().requires_grad_()
    F.cross_entropy(w + torch.log(prior), y).backward()
    torch.testing.assert_close(zz.grad, w.grad, rtol=1e-13, atol=1e-16)


def test_float64_counts_of_1e_50_give_the_ldam_margins():
    counts = torch.tensor([1e-50, 1.0, 1e10], dtype=F64)
    ldam = lg.ldam_drw(counts, max_margin=0.5).members()[0]
    m = counts**-0.25
    torch.testing.assert_close(ldam.margins(F64), m * (0.5 / m.max()), rtol=1e-14, atol=0)
    assert torch.isfinite(ldam.margins(torch.float32)).all()


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gradients_stay_finite_and_close(name, dtype):
    """Every eps and constant survives half precision: the result follows the float32 one."""
    make, kind = POLICIES[name]
    z0, y, _ = batch(kind, torch.float32, n=16)
    grads = {}
    for dt in (torch.float32, dtype):
        z = z0.to(dt).requires_grad_()
        out = make()(z, y)
        if kind == "softmax":
            loss = F.cross_entropy(out.float(), y)
        else:
            loss = F.binary_cross_entropy_with_logits(out.float(), y.float())
        grads[dt] = torch.autograd.grad(loss, z)[0].float()
    assert torch.isfinite(grads[dtype]).all()
    scale = float(grads[torch.float32].abs().max())
    torch.testing.assert_close(grads[dtype], grads[torch.float32], rtol=0.05, atol=0.03 * scale)


# --- 1. The caller's loss is not the plain loss the surrogate assumes ------------------------


def softmax_case(seed: int = 0, n: int = 8, dtype: torch.dtype = F64):
    g = torch.Generator().manual_seed(seed)
    z = 3 * torch.randn(n, C, generator=g, dtype=dtype)
    y = torch.randint(0, C, (n,), generator=g)
    return z, y


@pytest.mark.parametrize("name", SOFTMAX_SURROGATES)
@pytest.mark.parametrize(
    "loss",
    [
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        lambda out, y: F.cross_entropy(out / 2.0, y),
        lambda out, y: F.cross_entropy(out, y) + 0.1 * out.pow(2).sum(),
        lambda out, y: F.cross_entropy(out, F.one_hot(y, C).to(out.dtype) * 0.8 + 0.05),
    ],
    ids=["label_smoothing", "temperature", "second_term", "other_soft_target"],
)
def test_softmax_surrogates_refuse_a_loss_they_cannot_reproduce(name, loss):
    z, y = softmax_case()
    z.requires_grad_()
    with pytest.raises(ValueError, match=r"not one: .*label_smoothing="):
        loss(POLICIES[name][0]()(z, y), y).backward()
    loss(lg.chain(POLICIES[name][0]())(z, y), y)  # the forward itself is fine
    # check=False: the gradient is computed (whatever it means)
    policy = {
        "labels_trick": lambda: lg.labels_trick(check=False),
        "ldam_drw": lambda: lg.ldam_drw([8.0, 4.0, 2.0, 1.0], s=4.0, check=False),
        "logit_adjust": lambda: lg.logit_adjust([8.0, 4.0, 2.0, 1.0], check=False),
        "seesaw": lambda: lg.seesaw(C, check=False),
    }[name]()
    loss(policy(z, y), y).backward()


def test_softmax_surrogates_refuse_weight_with_soft_targets():
    z, _ = softmax_case()
    z.requires_grad_()
    q = torch.softmax(torch.randn(8, C, dtype=F64), -1)
    w = torch.tensor(W4, dtype=F64)
    for name in ["logit_adjust", "ldam_drw", "labels_trick"]:
        with pytest.raises(ValueError, match="weight= with soft targets"):
            F.cross_entropy(POLICIES[name][0]()(z, q), q, weight=w).backward()


def test_the_issue_example_logit_adjust_under_label_smoothing():
    z = torch.tensor([[6.0, 0.5, 1.0]], dtype=F64, requires_grad=True)
    y = torch.tensor([0])
    prior = torch.tensor([0.7, 0.2, 0.1], dtype=F64)
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(lg.logit_adjust(prior)(z, y), y, label_smoothing=0.1).backward()
    out = lg.logit_adjust(prior, label_smoothing=0.1)(z, y)
    (got,) = torch.autograd.grad(F.cross_entropy(out, y, label_smoothing=0.1), z)
    w = z.detach().requires_grad_()
    want = F.cross_entropy(w + torch.log(prior), y, label_smoothing=0.1)
    torch.testing.assert_close(got, torch.autograd.grad(want, w)[0], rtol=1e-12, atol=1e-15)


def ldam_margins(counts: torch.Tensor, max_m: float) -> torch.Tensor:
    """kaidic/LDAM-DRW: m_list = 1 / sqrt(sqrt(n)), scaled to max_m."""
    m = 1.0 / torch.sqrt(torch.sqrt(counts))
    return m * (max_m / m.max())


COUNTS = [8.0, 4.0, 2.0, 1.0]


def smoothed_reference(name: str, z: torch.Tensor, y: torch.Tensor, eps: float, reduction: str):
    """The published loss, label-smoothed the way F.cross_entropy smooths."""
    counts = torch.tensor(COUNTS, dtype=z.dtype)
    if name == "logit_adjust":
        return F.cross_entropy(z + torch.log(counts), y, label_smoothing=eps, reduction=reduction)
    if name == "ldam_drw":
        onehot = F.one_hot(y, C).to(z.dtype)
        out = z - onehot * ldam_margins(counts, 0.5)
        return F.cross_entropy(4.0 * out, y, label_smoothing=eps, reduction=reduction)
    if name == "seesaw":  # p = q = 0: plain cross-entropy
        return F.cross_entropy(z, y, label_smoothing=eps, reduction=reduction)
    present = torch.unique(y)
    remap = torch.full((C,), -1, dtype=torch.long)
    remap[present] = torch.arange(present.numel())
    return F.cross_entropy(z[:, present], remap[y], label_smoothing=eps, reduction=reduction)


SMOOTHED = {
    "logit_adjust": lambda eps: lg.logit_adjust(COUNTS, label_smoothing=eps),
    "ldam_drw": lambda eps: lg.ldam_drw(COUNTS, s=4.0, label_smoothing=eps),
    "seesaw": lambda eps: lg.seesaw(C, p=0.0, q=0.0, label_smoothing=eps),
    "labels_trick": lambda eps: lg.labels_trick(label_smoothing=eps),
}


@pytest.mark.parametrize("name", sorted(SMOOTHED))
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_label_smoothing_argument_gives_the_smoothed_published_loss(name, eps, reduction, dtype):
    assert set(SMOOTHED) == set(SOFTMAX_SURROGATES)
    z0, y = softmax_case(seed=3, n=10, dtype=dtype)
    y[0] = 3  # labels_trick: class 3 present, class ... possibly not
    z = z0.clone().requires_grad_()
    out = SMOOTHED[name](eps)(z, y)
    (got,) = torch.autograd.grad(
        F.cross_entropy(out, y, label_smoothing=eps, reduction=reduction), z
    )
    w = z0.clone().requires_grad_()
    (want,) = torch.autograd.grad(smoothed_reference(name, w, y, eps, reduction), w)
    tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(got, want, **tol)


def test_seesaw_without_factors_is_the_incoming_gradient():
    """seesaw(p=0, q=0) is plain cross-entropy: the user's gradient, exactly."""
    z, y = softmax_case(seed=4)
    z.requires_grad_()
    (got,) = torch.autograd.grad(F.cross_entropy(lg.seesaw(C, p=0.0, q=0.0)(z, y), y), z)
    (want,) = torch.autograd.grad(F.cross_entropy(z, y), z)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-17)


def test_sigmoid_surrogate_refuses_what_changes_the_sign_or_a_zero():
    z = torch.tensor([[2.0, -4.0, 0.0, 0.3]], dtype=F64, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.5, 0.0]], dtype=F64)
    policy = lg.asymmetric_focus(check=True)
    bce = F.binary_cross_entropy_with_logits
    with pytest.raises(ValueError, match="binary_cross_entropy_with_logits"):
        bce(policy(z, y), y * 0.9 + 0.05).backward()  # smoothed in the loss only
    with pytest.raises(ValueError, match="second loss term"):
        (bce(policy(z, y), y, reduction="sum") - 2 * policy(z, y).sum()).backward()
    pos_weight = torch.tensor([3.0, 1.0, 1.0, 2.0], dtype=F64)  # hard entries: a scale
    y_hard = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=F64)
    bce(policy(z, y_hard), y_hard, pos_weight=pos_weight).backward()


def test_chain_refuses_two_replacing_policies_and_one_after_a_reweighting():
    la, ss = lg.logit_adjust(COUNTS), lg.seesaw(C)
    with pytest.raises(ValueError, match="both replace the gradient"):
        lg.chain(la, ss)
    with pytest.raises(ValueError, match="both replace the gradient"):
        lg.chain(lg.ldam_drw(COUNTS), lg.schedule(lg.labels_trick(), start_step=5))
    for before in (lg.pos_neg_weights(2.0, 1.0), lg.clip_per_class(1.0), lg.eqlv2(C)):
        with pytest.raises(ValueError, match="must come first"):
            lg.chain(before, lg.logit_adjust(COUNTS))
    # Row-wise scales keep cross-entropy's form; entry-wise ones keep BCE's.
    lg.chain(lg.mask_unknown(), lg.class_weights(W4), lg.clip_per_sample(1.0), la)
    lg.chain(
        lg.pos_neg_weights(2.0, 1.0), lg.eql(0.1, [0.5, 0.3, 0.05, 0.01]), lg.asymmetric_focus()
    )
    lg.chain(la, lg.pos_neg_weights(2.0, 1.0))  # anything after it


# --- 5. Soft targets ------------------------------------------------------------------------


def test_soft_row_at_its_prediction_takes_the_batch_scale():
    """A soft row whose prediction equals its target: the scale the other rows share."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, C, generator=g, dtype=F64)
    q = torch.softmax(torch.randn(6, C, generator=g, dtype=F64), -1)
    q[2] = torch.softmax(z[2], -1)  # no zero entry, gradient 0
    prior = torch.tensor(COUNTS, dtype=F64)
    for reduction in ("mean", "sum"):
        zz = z.clone().requires_grad_()
        out = lg.logit_adjust(prior)(zz, q)
        (got,) = torch.autograd.grad(F.cross_entropy(out, q, reduction=reduction), zz)
        w = z.clone().requires_grad_()
        ref = F.cross_entropy(w + torch.log(prior), q, reduction=reduction)
        (want,) = torch.autograd.grad(ref, w)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
        assert got[2].abs().max() > 1e-3  # not the zero of the vanished gradient


def test_soft_row_at_its_prediction_without_a_shared_scale_is_refused():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, C, generator=g, dtype=F64, requires_grad=True)
    q = torch.softmax(torch.randn(3, C, generator=g, dtype=F64), -1)
    q[2] = torch.softmax(z[2].detach(), -1)
    rows = torch.tensor([1.0, 2.0, 3.0], dtype=F64)  # per-sample weights: no shared scale
    with pytest.raises(ValueError, match="cannot read the loss scale"):
        out = lg.logit_adjust(COUNTS)(z, q)
        (F.cross_entropy(out, q, reduction="none") * rows).sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_logit_adjust_soft_targets_equal_the_published_loss(dtype):
    """Menon et al.: cross-entropy on z + tau log(prior), here with probability targets."""
    g = torch.Generator().manual_seed(6)
    z0 = torch.randn(8, C, generator=g, dtype=dtype)
    q = torch.softmax(2 * torch.randn(8, C, generator=g, dtype=dtype), -1)
    prior = torch.tensor(COUNTS, dtype=dtype)
    z = z0.clone().requires_grad_()
    (got,) = torch.autograd.grad(F.cross_entropy(lg.logit_adjust(prior, 0.5)(z, q), q), z)
    w = z0.clone().requires_grad_()
    (want,) = torch.autograd.grad(F.cross_entropy(w + 0.5 * torch.log(prior), q), w)
    tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_ldam_soft_and_one_hot_targets_equal_the_published_loss(dtype):
    """kaidic/LDAM-DRW for one-hot targets; CE(s (z - q Delta), q) for soft ones (documented)."""
    g = torch.Generator().manual_seed(7)
    z0 = torch.randn(8, C, generator=g, dtype=dtype)
    y = torch.randint(0, C, (8,), generator=g)
    counts = torch.tensor(COUNTS, dtype=dtype)
    m = ldam_margins(counts, 0.5)
    q_soft = torch.softmax(2 * torch.randn(8, C, generator=g, dtype=dtype), -1)
    tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-6}
    for q in (F.one_hot(y, C).to(dtype), q_soft):
        z = z0.clone().requires_grad_()
        (got,) = torch.autograd.grad(F.cross_entropy(lg.ldam_drw(counts, s=4.0)(z, q), q), z)
        w = z0.clone().requires_grad_()
        (want,) = torch.autograd.grad(F.cross_entropy(4.0 * (w - q * m), q), w)
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_seesaw_one_hot_float_labels_equal_class_indices_and_soft_ones_are_refused(dtype):
    g = torch.Generator().manual_seed(8)
    z0 = torch.randn(8, C, generator=g, dtype=dtype)
    y = torch.randint(0, C, (8,), generator=g)
    grads = []
    for target in (y, F.one_hot(y, C).to(dtype)):
        z = z0.clone().requires_grad_()
        grads.append(torch.autograd.grad(F.cross_entropy(lg.seesaw(C)(z, target), target), z)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    q = torch.softmax(torch.randn(8, C, generator=g, dtype=dtype), -1)
    z = z0.clone().requires_grad_()
    with pytest.raises(ValueError, match="soft targets must be one-hot"):
        F.cross_entropy(lg.seesaw(C)(z, q), q).backward()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_eql_soft_targets_equal_the_published_weighting(dtype):
    """Tan et al.: BCE weighted by w = 1 - E T(f) (1 - y), with the soft value y."""
    g = torch.Generator().manual_seed(9)
    z0 = torch.randn(8, C, generator=g, dtype=dtype)
    y = torch.rand(8, C, generator=g, dtype=dtype)
    y[3] = 0.2  # a background sample (no y >= 0.5)
    freq = [0.5, 0.3, 0.05, 0.01]
    z = z0.clone().requires_grad_()
    out = lg.eql(0.1, freq)(z, y)
    (got,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(out, y, reduction="sum"), z)
    rare = torch.tensor(freq) < 0.1
    e = (y >= 0.5).any(-1, keepdim=True)
    w = 1 - (e & rare).to(dtype) * (1 - y)
    zz = z0.clone().requires_grad_()
    ref = F.binary_cross_entropy_with_logits(zz, y, weight=w, reduction="sum")
    (want,) = torch.autograd.grad(ref, zz)
    tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == F64 else {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(got, want, **tol)


def asl_paper_loss(z, y, gamma_pos, gamma_neg, clip):
    """Ridnik et al. 2021, eq. (1)-(4): -y (1-p)^g+ log p - (1-y) p_m^g- log(1 - p_m)."""
    p = torch.sigmoid(z)
    p_m = (p - clip).clamp(min=0)
    pos = (1 - p) ** gamma_pos * torch.log(p)
    neg = p_m**gamma_neg * torch.log(1 - p_m)
    return -(y * pos + (1 - y) * neg).sum()


def asl_authors_loss(z, y, clip):
    """Alibaba-MIIL/ASL losses.py AsymmetricLoss at gamma_pos = gamma_neg = 0, eps clamp off."""
    xs_pos = torch.sigmoid(z)
    xs_neg = (1 - xs_pos + clip).clamp(max=1)
    return -(y * torch.log(xs_pos) + (1 - y) * torch.log(xs_neg)).sum()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "clip"), [(0, 0, 0.2), (0, 0, 0.05), (1, 3, 0.1)]
)
def test_asymmetric_focus_equals_the_paper_loss_with_soft_labels(dtype, gamma_pos, gamma_neg, clip):
    """Pure probability shifting (gamma_neg = 0, clip > 0) reveals the shifted-away negatives."""
    g = torch.Generator().manual_seed(10)
    z0 = 2 * torch.randn(32, C, generator=g, dtype=dtype)
    y = torch.rand(32, C, generator=g, dtype=dtype)
    y[::3] = (y[::3] > 0.5).to(dtype)
    z = z0.clone().requires_grad_()
    out = lg.asymmetric_focus(gamma_pos, gamma_neg, clip)(z, y)
    (got,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(out, y, reduction="sum"), z)
    w = z0.clone().requires_grad_()
    (want,) = torch.autograd.grad(asl_paper_loss(w, y, gamma_pos, gamma_neg, clip), w)
    tol = {"rtol": 1e-10, "atol": 1e-13} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(got, want, **tol)
    shifted_away = (torch.sigmoid(z0) <= clip) & (y == 0)
    assert shifted_away.any() and (got[shifted_away] == 0).all()
    if gamma_pos == gamma_neg == 0:
        w = z0.clone().requires_grad_()
        (authors,) = torch.autograd.grad(asl_authors_loss(w, y, clip), w)
        torch.testing.assert_close(got, authors, **tol)


def test_float64_soft_target_near_the_prediction_keeps_its_sign():
    """0.1 in float32 is 0.10000000149: near sigmoid(z) the sign of sigmoid(z) - y flips."""
    y = torch.tensor([[0.1, 0.1]], dtype=F64)
    z0 = torch.logit(torch.tensor([[0.1 + 1e-10, 0.1 - 1e-10]], dtype=F64))
    z = z0.clone().requires_grad_()
    out = lg.asymmetric_focus(0.0, 0.0, 0.0)(z, y)  # the plain BCE itself
    (got,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(out, y, reduction="sum"), z)
    want = torch.sigmoid(z0) - y
    assert (got.sign() == want.sign()).all()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


# --- labels_trick ---------------------------------------------------------------------------


def restricted_ce(z, y, keep, class_dim, reduction, ignore_index=-100):
    """Reference: cross-entropy over the kept classes only (the others' logits dropped)."""
    idx = keep.nonzero().flatten()
    remap = torch.full((z.shape[class_dim],), -1, dtype=torch.long)
    remap[idx] = torch.arange(idx.numel())
    ignored = y == ignore_index
    yy = torch.where(ignored, ignore_index, remap[torch.where(ignored, 0, y)])
    zr = z.index_select(class_dim, idx)
    if class_dim != 1:
        zr = zr.movedim(class_dim, 1)
    return F.cross_entropy(zr, yy, reduction=reduction, ignore_index=ignore_index)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    ("shape", "class_dim"),
    [((7, 6), 1), ((3, 6, 2, 3), 1), ((3, 4, 6), -1)],
    ids=["NC", "NCHW", "NTC"],
)
@pytest.mark.parametrize("classes", [None, [1, 2, 4], "mask"])
def test_labels_trick_equals_cross_entropy_over_the_kept_classes(
    reduction, shape, class_dim, classes
):
    g = torch.Generator().manual_seed(11)
    c = 6
    z0 = torch.randn(*shape, generator=g, dtype=F64)
    label_shape = tuple(s for i, s in enumerate(shape) if i != class_dim % len(shape))
    pool = torch.tensor([1, 2, 4])
    y = pool[torch.randint(0, 3, label_shape, generator=g)]
    y.view(-1)[::4] = -100
    if classes is None:
        keep = torch.zeros(c, dtype=torch.bool)
        keep[y[y != -100].unique()] = True
        policy = lg.labels_trick()
    elif classes == "mask":
        keep = torch.tensor([False, True, True, False, True, True])  # 5 kept but never a label
        policy = lg.labels_trick(keep)
    else:
        keep = torch.zeros(c, dtype=torch.bool)
        keep[classes] = True
        policy = lg.labels_trick(classes)
    z = z0.clone().requires_grad_()
    out = policy(z, y, class_dim=class_dim)
    if class_dim != 1:
        loss = F.cross_entropy(out.movedim(class_dim, 1), y, reduction=reduction)
    else:
        loss = F.cross_entropy(out, y, reduction=reduction)
    (got,) = torch.autograd.grad(loss, z)
    w = z0.clone().requires_grad_()
    (want,) = torch.autograd.grad(restricted_ce(w, y, keep, class_dim, reduction), w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    dropped = got.movedim(class_dim, -1)[..., ~keep]
    assert (dropped == 0).all()


def test_labels_trick_refuses_labels_outside_its_classes_and_bad_arguments():
    z = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 3, 1])
    with pytest.raises(ValueError, match="outside the classes"):
        F.cross_entropy(lg.labels_trick([0, 1])(z, y), y).backward()
    with pytest.raises(ValueError, match="out of range"):
        lg.labels_trick([0, 7])(z, y)
    with pytest.raises(ValueError, match="at least one class"):
        lg.labels_trick([])
    with pytest.raises(ValueError, match="label_smoothing"):
        lg.labels_trick(label_smoothing=1.5)
    with pytest.raises(TypeError, match="check"):
        lg.labels_trick(check="yes")  # type: ignore[arg-type]


def test_labels_trick_in_a_chain_with_weights_after_it():
    z0, y = softmax_case(seed=12)
    y[0] = -100
    w = torch.tensor(W4, dtype=F64)
    z = z0.clone().requires_grad_()
    policy = lg.chain(lg.mask_unknown(), lg.labels_trick(), lg.class_weights(w))
    (got,) = torch.autograd.grad(F.cross_entropy(policy(z, y), y, reduction="sum"), z)
    zz = z0.clone().requires_grad_()
    keep = torch.zeros(C, dtype=torch.bool)
    keep[y[y >= 0].unique()] = True
    per = restricted_ce(zz, y, keep, 1, "none")
    ww = torch.where(y >= 0, w[y.clamp(min=0)], 0.0)
    (want,) = torch.autograd.grad((per * ww).sum(), zz)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


# --- Targets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_soft_values_keep_their_dtype_through_class_last(dtype):
    g = torch.Generator().manual_seed(13)
    y = torch.rand(3, 5, 2, generator=g, dtype=F64).to(dtype)
    y[0, 1, 0] = -1
    like = torch.zeros(3, 5, 2, dtype=torch.float32)
    t = lg.Targets.coerce(y, like=like, class_dim=1)
    assert t.encoding == "soft" and t.values.dtype == dtype
    assert torch.equal(t.values, y.clamp(min=0))
    flat = t.class_last()
    assert flat.values.dtype == dtype
    assert torch.equal(flat.values, y.clamp(min=0).movedim(1, -1).reshape(3, 2, 5))
    assert torch.equal(flat.positive, flat.values >= 0.5)


def test_a_deferred_check_failure_is_raised_by_the_next_call_once():
    """On an accelerator the check's result reaches host memory without a wait (report());
    the policy's next call raises it. Simulated here: the host copy says "not plain"."""
    z, y = softmax_case()
    policy = lg.chain(lg.logit_adjust(COUNTS))
    surrogate = policy.members()[0]
    surrogate._pending_host = torch.tensor(1)
    with pytest.raises(ValueError, match=r"not one: .*\[in an earlier backward pass\]"):
        policy(z, y)
    policy(z, y)  # raised once, then cleared


def test_check_argument_is_validated_everywhere():
    for make in (
        lambda: lg.logit_adjust(COUNTS, check=1),
        lambda: lg.ldam_drw(COUNTS, check="on"),
        lambda: lg.seesaw(C, check=0),
        lambda: lg.asymmetric_focus(check="x"),
    ):
        with pytest.raises(TypeError, match="check must be True, False or None"):
            make()
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        lg.logit_adjust(COUNTS, label_smoothing=2.0)


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("n", [0, 3])
def test_empty_and_all_unlabelled_batches_give_a_zero_gradient(name, n):
    make, kind = POLICIES[name]
    z = torch.randn(n, C, dtype=F64, requires_grad=True)
    if kind == "softmax":
        y = torch.full((n,), -100)
        loss = F.cross_entropy(make()(z, y), y, reduction="sum")
    else:
        y = torch.full((n, C), -1)
        out = lg.chain(lg.mask_unknown(), make())(z, y)
        loss = F.binary_cross_entropy_with_logits(out, y.clamp(min=0).to(F64))
    (g,) = torch.autograd.grad(loss, z)
    assert g.shape == (n, C) and (g == 0).all()


def test_labels_trick_state_dict_round_trip_and_mismatch():
    a, b = lg.labels_trick([0, 3]), lg.labels_trick([1, 2])
    b.load_state_dict(a.state_dict())
    assert b.classes.tolist() == [0, 3] and b._max_class == 3
    with pytest.raises(RuntimeError, match="size mismatch"):
        lg.labels_trick().load_state_dict(a.state_dict())
    z = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="class 3"):
        b(z, torch.tensor([0, 0]))


def test_labels_trick_with_another_ignore_index_and_soft_targets():
    g = torch.Generator().manual_seed(14)
    z0 = torch.randn(6, 5, generator=g, dtype=F64)
    y = torch.tensor([0, 255, 3, 3, 255, 0])
    keep = torch.tensor([True, False, False, True, False])
    z = z0.clone().requires_grad_()
    out = lg.labels_trick()(z, y, ignore_index=255)
    (got,) = torch.autograd.grad(F.cross_entropy(out, y, ignore_index=255), z)
    w = z0.clone().requires_grad_()
    (want,) = torch.autograd.grad(restricted_ce(w, y, keep, 1, "mean", ignore_index=255), w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    # Soft targets: the kept classes are those with any mass in the batch.
    q = torch.zeros(6, 5, dtype=F64)
    q[:, [1, 2]] = torch.softmax(torch.randn(6, 2, generator=g, dtype=F64), -1)
    z = z0.clone().requires_grad_()
    out = lg.labels_trick(label_smoothing=0.2)(z, q)
    (got,) = torch.autograd.grad(F.cross_entropy(out, q, label_smoothing=0.2), z)
    w = z0.clone().requires_grad_()
    ref = F.cross_entropy(w[:, [1, 2]], q[:, [1, 2]], label_smoothing=0.2)
    (want,) = torch.autograd.grad(ref, w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", SOFTMAX_SURROGATES)
@pytest.mark.parametrize(("c", "scale"), [(2, 1.0), (1000, 30.0), (32000, 3.0)])
def test_no_false_refusal_for_a_float32_loss_on_float64_logits(name, c, scale):
    """The tolerance covers a loss computed in lower precision than the logits (up to 1e-5)."""
    g = torch.Generator().manual_seed(15)
    z = (scale * torch.randn(4, c, generator=g, dtype=F64)).requires_grad_()
    y = torch.randint(0, c, (4,), generator=g)
    counts = torch.rand(c, generator=g, dtype=F64) + 0.1
    make = {
        "labels_trick": lambda: lg.labels_trick(),
        "ldam_drw": lambda: lg.ldam_drw(counts),
        "logit_adjust": lambda: lg.logit_adjust(counts),
        "seesaw": lambda: lg.seesaw(c),
    }[name]
    (got,) = torch.autograd.grad(F.cross_entropy(make()(z, y).float(), y), z)
    (want,) = torch.autograd.grad(F.cross_entropy(make()(z, y), y), z)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_refusals_are_one_line():
    z, y = softmax_case()
    z.requires_grad_()
    with pytest.raises(ValueError) as info:
        F.cross_entropy(lg.logit_adjust(COUNTS)(z, y), y, label_smoothing=0.1).backward()
    assert "\n" not in str(info.value)
