"""Hostile review of the issue-24 speed changes at the logits (HOSTILE.md), by the public API.

Targets now compare float labels straight into 0/1 masks and compute ``known`` when first read;
mask_unknown folds into the positive/negative factors; clipping sums float64 squares. Each test
compares with a reference written here (autograd of the reweighted loss, an exact norm) or expects
the documented error.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg

F64 = torch.float64
C = 4


def _grad(policy: torch.nn.Module, up: torch.Tensor, targets: object = None) -> torch.Tensor:
    z = torch.zeros(up.shape, dtype=up.dtype, requires_grad=True)
    out = policy(z) if targets is None else policy(z, targets)
    (g,) = torch.autograd.grad(out, z, up)
    return g


# --- 4/2. Targets mutated after construction; Targets reused inside torch.func --------------


READERS = {
    "mask_unknown": lambda: lg.mask_unknown(),
    "pos_neg_weights": lambda: lg.pos_neg_weights(pos=2.0, neg=0.5),
    "chain(mask_unknown, pos_neg)": lambda: lg.chain(
        lg.mask_unknown(), lg.pos_neg_weights(pos=2.0, neg=0.5)
    ),
    "eqlv2": lambda: lg.eqlv2(num_classes=C),
}


@pytest.mark.parametrize("name", list(READERS))
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16])
def test_labels_changed_between_coerce_and_call_are_refused(name, dtype):
    """The labels were validated at coerce; a later in-place write (here an invalid 7 over an
    unknown -1) must not be read silently. Before the fix, mask_unknown gave the formerly
    unknown entry a gradient of 1 and the invalid label was never checked."""
    y = torch.tensor([[1.0, -1.0, 0.0, 1.0], [0.0, 1.0, 1.0, -1.0]], dtype=dtype)
    t = lg.Targets.coerce(y, num_classes=C)
    y[0, 1] = 7.0
    with pytest.raises(RuntimeError, match=r"modified in place after Targets\.coerce"):
        _grad(READERS[name](), torch.ones(2, C), t)


def test_labels_unchanged_targets_reused_across_calls_is_exact():
    y = torch.tensor([[1.0, -1.0, 0.0, 1.0], [0.0, 1.0, 1.0, -1.0]])
    t = lg.Targets.coerce(y, num_classes=C)
    pol = lg.chain(lg.mask_unknown(), lg.pos_neg_weights(pos=2.0, neg=0.5))
    want = torch.tensor([[2.0, 0.0, 0.5, 2.0], [0.5, 2.0, 2.0, 0.0]])
    for _ in range(3):
        assert torch.equal(_grad(pol, torch.ones(2, C), t), want)


def test_targets_made_outside_torch_func_are_readable_inside():
    """Inside a torch.func transform a tensor has no version counter: that is no evidence of a
    change (before the fix: a spurious "modified in place" error for t.known)."""
    y = torch.tensor([[1.0, -1.0, 0.0, 1.0]])
    t = lg.Targets.coerce(y, num_classes=C)
    got = torch.func.vmap(lambda x: x * t.known.float().sum())(torch.ones(2))
    assert got.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_per_label_losses_with_outside_targets_under_torch_func(dtype):
    y = torch.tensor([[1.0, -1.0, 0.0, 1.0], [0.0, 1.0, 1.0, -1.0]], dtype=dtype)
    t = lg.Targets.coerce(y, num_classes=C)
    x = torch.linspace(-1, 1, 2 * C, dtype=dtype).reshape(2, C)

    def f(w):
        return lg.per_label_losses(x * w, t, loss="bce").sum()

    w0 = torch.full((C,), 0.7, dtype=dtype)
    got = torch.func.grad(f)(w0)
    # Reference: autograd of the per-label BCE written here, unknown entries excluded.
    w = w0.clone().requires_grad_()
    known = y >= 0
    terms = F.binary_cross_entropy_with_logits(x * w, y.clamp(min=0), reduction="none")
    want_losses = lg.per_label_losses((x * w).detach(), t, loss="bce")
    # per_label_losses' reduction is its own (mean over known entries per label, see its doc):
    # take its per-label scale from the plain call and check the gradient by autograd.
    scale = want_losses / (terms.detach() * known).sum(0)
    ((terms * known).sum(0) * scale.detach()).sum().backward()
    torch.testing.assert_close(got, w.grad, rtol=1e-6, atol=0.0)


# --- 5/3. Every label dtype against autograd of the weighted loss -------------------------


LABEL_DTYPES = [torch.float32, F64, torch.float16, torch.bfloat16, torch.int64, torch.int8]


@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
@pytest.mark.parametrize("grad_dtype", [torch.float32, F64, torch.bfloat16])
@pytest.mark.parametrize("order", ["mask_first", "mask_last", "mask_twice"])
def test_fused_mask_unknown_pos_neg_equals_weighted_bce(label_dtype, grad_dtype, order):
    g = torch.Generator().manual_seed(0)
    y64 = torch.randint(-1, 2, (9, C), generator=g).to(F64)
    y64[:, 0] = -1.0  # a class with every label unknown
    y = y64.to(label_dtype)
    if label_dtype.is_floating_point:
        y = y.t().contiguous().t()  # non-contiguous labels
    w = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=grad_dtype)
    parts = {
        "mask_first": [lg.mask_unknown(), lg.class_weights(w), lg.pos_neg_weights(pos=2.0, neg=w)],
        "mask_last": [lg.class_weights(w), lg.pos_neg_weights(pos=2.0, neg=w), lg.mask_unknown()],
        "mask_twice": [lg.mask_unknown(), lg.pos_neg_weights(pos=2.0, neg=w), lg.mask_unknown()],
    }[order]
    pol = lg.chain(*parts)
    z0 = torch.randn(9, C, generator=g, dtype=F64)
    # Reference: autograd of sum(weight * BCE) over known entries, in float64.
    z = z0.clone().requires_grad_()
    pos, known = (y64 == 1).to(F64), (y64 >= 0).to(F64)
    cw = w.to(F64) if order != "mask_twice" else torch.ones(C, dtype=F64)
    weight = cw * (2.0 * pos + w.to(F64) * (known - pos)) * known
    F.binary_cross_entropy_with_logits(z, pos, weight=weight, reduction="sum").backward()
    zz = z0.to(grad_dtype).requires_grad_()
    loss = F.binary_cross_entropy_with_logits(
        pol(zz, lg.Targets.coerce(y, num_classes=C, encoding="multi_hot")),
        pos.to(grad_dtype),
        reduction="sum",
    )
    loss.backward()
    assert zz.grad is not None
    assert torch.equal(zz.grad[known == 0], torch.zeros_like(zz.grad[known == 0]))  # exact 0
    tol = {torch.float32: 1e-6, F64: 1e-12, torch.bfloat16: 2e-2}[grad_dtype]
    torch.testing.assert_close(zz.grad.to(F64), z.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("label_dtype", [torch.float32, F64, torch.float16, torch.int64])
def test_nonfinite_gradient_passes_at_known_entries_and_is_nan_where_masked(label_dtype):
    y = torch.tensor([[1, -1, 0, 1], [0, 1, -1, 0]]).to(label_dtype)
    up = torch.tensor([[math.inf, math.inf, -math.inf, math.nan], [1e-45, 3e38, math.nan, -0.0]])
    pol = lg.chain(lg.mask_unknown(), lg.pos_neg_weights(pos=1.0, neg=1.0))
    got = _grad(pol, up, lg.Targets.coerce(y, num_classes=C, encoding="multi_hot"))
    known = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1]], dtype=torch.bool)
    # weights of 1 leave known entries bitwise as they were (NaN, inf, subnormal, -0.0)
    assert torch.equal(got[known].view(torch.int32), up[known].view(torch.int32))
    # a masked finite entry would be an exact 0; masked inf / NaN give NaN (contract 0.2)
    assert got[~known].isnan().all()


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_all_unknown_batches(n):
    y = torch.full((n, C), -1.0)
    pol = lg.chain(lg.mask_unknown(), lg.pos_neg_weights(pos=3.0, neg=0.5))
    got = _grad(pol, torch.ones(n, C), y)
    assert torch.equal(got, torch.zeros(n, C))


def test_expanded_labels_one_class():
    y = torch.tensor([[-1.0], [1.0]]).expand(2, 5).t()  # (5, 2) expanded, stride 0
    y = y[:, :1]  # C = 1, non-contiguous
    pol = lg.chain(lg.mask_unknown(), lg.pos_neg_weights(pos=2.0, neg=0.5))
    got = _grad(pol, torch.ones(5, 1), y)
    assert torch.equal(got, torch.zeros(5, 1))


# --- 3. Clipping: the float64 sum of squares ---------------------------------------------


def _exact_clip(values: list[float], max_norm: float) -> list[float]:
    """Each entry times max_norm / ||g|| (when larger), from exact rational arithmetic."""
    from decimal import Decimal, getcontext

    getcontext().prec = 80
    norm = sum(Decimal(v) ** 2 for v in values).sqrt()
    if norm <= Decimal(max_norm):
        return values
    return [float(Decimal(v) * (Decimal(max_norm) / norm)) for v in values]


@pytest.mark.parametrize("magnitude", [1e-300, 1e-30, 1.0, 1e30, 1e150])
def test_clip_float64_within_three_ulps_of_exact(magnitude):
    """The speed change (sum of squares instead of vector_norm) moves float64 results by up to
    3 ulps against the old bits; both stay within 3 ulps of the exact answer, which the
    contract ("scaled down to L2 norm max_norm") allows."""
    g = torch.Generator().manual_seed(3)
    up = torch.randn(50, 1, generator=g, dtype=F64) * magnitude
    max_norm = 1e-2 * float(up.abs().max())
    got = _grad(lg.clip_per_class(max_norm), up)[:, 0].tolist()
    want = _exact_clip(up[:, 0].tolist(), max_norm)
    for a, b in zip(got, want, strict=True):
        assert abs(a - b) <= 3 * math.ulp(b), (a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_clip_low_precision_is_the_correctly_rounded_float64_factor(dtype):
    """float32/16/bf16: squares are exact in float64, so the result is the float64 factor
    rounded once to the gradient's dtype (bitwise)."""
    g = torch.Generator().manual_seed(4)
    up = (torch.randn(30, 6, generator=g, dtype=F64) * 40).to(dtype)
    got = _grad(lg.clip_per_sample(0.5), up)
    wide = up.to(F64)
    norm = torch.linalg.vector_norm(wide, dim=1, keepdim=True)
    factor = torch.clamp(0.5 / norm, max=1.0).to(dtype)
    assert torch.equal(got, up * factor)


def test_clip_max_norm_above_float32_range_is_accepted():
    """A finite max_norm of 1e39 (float64 gradients) was refused as "not finite"."""
    up = torch.tensor([[3e39], [4e39]], dtype=F64)
    got = _grad(lg.clip_per_class(max_norm=1e39), up)
    torch.testing.assert_close(got, torch.tensor([[0.6e39], [0.8e39]], dtype=F64))
    assert lg.clip_per_sample(max_norm=1e300).max_norm == 1e300


@pytest.mark.parametrize("which", ["class", "sample"])
def test_clip_float64_entries_whose_squares_overflow_are_clipped(which):
    """|g| > 1.3e154 is finite in float64 but its square is not: the group must still be
    clipped to max_norm, not left untouched as if it held an inf."""
    up = torch.tensor([[3e200, 0.0], [4e200, 0.0]], dtype=F64)
    up = up if which == "class" else up.t().contiguous()
    pol = lg.clip_per_class(1.0) if which == "class" else lg.clip_per_sample(1.0)
    got = _grad(pol, up)
    want = torch.tensor([[0.6, 0.0], [0.8, 0.0]], dtype=F64)
    torch.testing.assert_close(got, want if which == "class" else want.t())


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
def test_clip_nonfinite_group_untouched_others_clipped(bad, dtype):
    up = torch.tensor([[bad, 1e-45, -0.0], [3.0, 4.0, 0.0], [0.0, 0.0, -0.0]]).to(dtype)
    got = _grad(lg.clip_per_sample(1.0), up)
    bits = (
        torch.int16 if dtype == torch.bfloat16 else (torch.int64 if dtype == F64 else torch.int32)
    )
    # untouched: NaN stays NaN (its payload may be canonicalised), the rest keeps its bits
    assert torch.equal(got[0].isnan(), up[0].isnan())
    finite = ~up[0].isnan()
    assert torch.equal(got[0][finite].view(bits), up[0][finite].view(bits))
    assert torch.equal(got[2].view(bits), up[2].view(bits))  # zero group: exactly itself
    torch.testing.assert_close(got[1], torch.tensor([0.6, 0.8, 0.0], dtype=dtype))


# --- 4. Aggregator wrappers' state; 3. the fused Gramian check ---------------------------


def _gram(k: int, seed: int) -> torch.Tensor:
    j = torch.randn(k, 5, generator=torch.Generator().manual_seed(seed))
    return j @ j.T


WRAPPERS = {
    "CRMOGM": lambda inner: lg.aggregators.CRMOGM(inner),
    "Amortized": lambda inner: lg.aggregation.Amortized(inner, every=2),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_a_refused_wrapper_state_leaves_the_wrapper_untouched(wrapper):
    """A state saved from a wrapper of MGDA is refused by a wrapper of UPGrad; before the fix
    CRMOGM's ``smoothed`` was already overwritten (resized and loaded) when the error came."""
    src = WRAPPERS[wrapper](lg.aggregators.MGDA())
    dst = WRAPPERS[wrapper](lg.aggregators.UPGrad())
    for i in range(3):
        src.weights(_gram(3, i))
        dst.weights(_gram(4, 10 + i))
    before = {k: v.clone() for k, v in dst.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(ValueError, match=r"saved from .*MGDA.*this is .*UPGrad"):
        dst.load_state_dict(src.state_dict())
    after = dst.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # and the same types still round-trip exactly
    again = WRAPPERS[wrapper](lg.aggregators.MGDA())
    again.load_state_dict(src.state_dict())
    g = _gram(3, 99)
    assert torch.equal(again.weights(g), src.weights(g))


def _step_by_step_ok(g: torch.Tensor) -> bool:
    """check_gramian's documented tests, one by one, in float64 (the reference)."""
    tol = torch.finfo(F64 if g.dtype == F64 else torch.bfloat16).eps ** 0.5
    d = g.double()
    if not bool(d.isfinite().all()):
        return False
    diag = d.diagonal()
    limit = tol * float(diag.abs().max())
    if float(diag.min()) < -limit or float((d - d.T).abs().max()) > limit:
        return False
    root = diag.clamp(min=0).sqrt()
    return not float((d.abs() - root[:, None] * root[None, :] * (1 + tol)).max()) > limit


def _hostile_gramians() -> list[torch.Tensor]:
    inf, nan, tiny = math.inf, math.nan, 5e-324
    base = [
        [[0.0]],
        [[-0.0]],
        [[tiny]],
        [[-tiny]],
        [[1e-300]],
        [[1e300]],
        [[inf]],
        [[nan]],
        [[-1.0]],
        [[1.0, 1.0], [1.0, 1.0]],
        [[1.0, -1.0], [-1.0, 1.0]],
        [[1.0, 1.0 + 1e-3], [1.0 + 1e-3, 1.0]],
        [[1.0, 0.0], [0.0, -1e-9]],
        [[1.0, 1e-9], [0.0, 1.0]],
        [[1.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [0.0, 0.0]],
        [[-0.0, -0.0], [-0.0, -0.0]],
        [[1.0, inf], [inf, 1.0]],
        [[inf, 0.0], [0.0, 1.0]],
        [[inf, inf], [inf, inf]],
        [[1.0, nan], [nan, 1.0]],
        [[1.0, -inf], [-inf, 1.0]],
        [[1e308, 1e308], [1e308, 1e308]],
        [[1.7e308, -1.7e308], [1.7e308, 1.7e308]],
        [[tiny, tiny], [tiny, tiny]],
        [[tiny, 2 * tiny], [2 * tiny, tiny]],
        [[1e-320, 0.0], [0.0, 1e-320]],
        [[3e38, 3e38], [3e38, 3e38]],
        [[65504.0, 65504.0], [65504.0, 65504.0]],
        [[1.0, 0.5, 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, -0.0]],
    ]
    out = [torch.tensor(m, dtype=F64) for m in base]
    for seed in range(20):
        g = _gram(4, seed).double()
        i, j = seed % 4, (seed + 1) % 4
        scale = 10.0 ** (seed - 10)
        g = g * scale
        # push one off-diagonal pair just past / just inside the Cauchy-Schwarz bound
        bound = float((g[i, i] * g[j, j]).sqrt())
        g[i, j] = g[j, i] = bound * (1 + (1.0 if seed % 2 else -1.0) * 1e-7 * (seed % 5))
        out.append(g)
    return out


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16, torch.bfloat16])
def test_fused_gramian_check_accepts_exactly_what_the_step_by_step_checks_accept(dtype):
    from labelgrad.aggregators.aggregator_types import check_gramian

    for g64 in _hostile_gramians():
        g = g64.to(dtype)
        want = _step_by_step_ok(g)
        try:
            check_gramian(g)
            got = True
        except ValueError:
            got = False
        assert got == want, (dtype, g)


# --- 4. per_label_losses' cache of validated group ids -----------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        [0, 1, 1, 2],
        [0, 0, 0, 0],
        [1, 1, 0, 0],
    ],
    ids=["more groups", "fewer groups", "swapped"],
)
@pytest.mark.parametrize("how", ["numpy", "data"])
def test_group_ids_edited_behind_the_version_counter_are_read_anew(edit, how):
    """An edit through a NumPy view or ``.data`` does not bump the version counter; the cache of
    validated groups compares the values it checked with the tensor's (it kept the old K: an
    IndexError, or a silently empty group)."""
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 4, generator=g)
    y = (torch.rand(6, 4, generator=g) < 0.5).float()
    arr = np.array([0, 0, 1, 1])
    groups = torch.from_numpy(arr) if how == "numpy" else torch.tensor([0, 0, 1, 1])
    lg.per_label_losses(z, y, loss="bce", groups=groups)
    if how == "numpy":
        arr[:] = edit
    else:
        groups.data.copy_(torch.tensor(edit))
    got = lg.per_label_losses(z, y, loss="bce", groups=groups)
    want = lg.per_label_losses(z, y, loss="bce", groups=torch.tensor(edit))
    assert torch.equal(got, want)


def test_group_ids_edited_into_an_invalid_grouping_are_refused():
    groups = torch.tensor([0, 0, 1, 1])
    z, y = torch.zeros(2, 4), torch.ones(2, 4)
    lg.per_label_losses(z, y, loss="bce", groups=groups)
    groups.data[1] = 7
    with pytest.raises(ValueError, match="unused ids"):
        lg.per_label_losses(z, y, loss="bce", groups=groups)
