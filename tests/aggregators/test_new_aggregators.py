"""The aggregators added for TorchJD 0.18 parity: Constant, Krum, TrimmedMean, ExcessMTL, CRMOGM,
MoDo, SDMGrad and PCD.

Each is compared with TorchJD 0.18 (step by step, from the same state, for the stateful ones) on
random and adversarial inputs (condition numbers up to 1e8, rank-deficient, duplicated, opposite
and zero rows, 0 in the convex hull, K = 1..64), float64 and float32, and with a direct
implementation written here where TorchJD is not the whole story (the simplex projection, PCD's
optimality conditions). Tolerances are stated per test, relative to the largest reference entry.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import labelgrad as lg
from labelgrad.aggregators import pcd as pcd_module
from labelgrad.aggregators.double_sampling import project_to_simplex

A = lg.aggregators
HAS_TORCHJD = importlib.util.find_spec("torchjd") is not None
needs_torchjd = pytest.mark.skipif(not HAS_TORCHJD, reason="torchjd 0.18 is not installed")
DTYPES = [torch.float64, torch.float32]
DTYPE_IDS = ["float64", "float32"]


def random_jacobian(k: int, p: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = 1 + 3 * torch.rand(k, 1, generator=g, dtype=torch.float64)
    return (torch.randn(k, p, generator=g, dtype=torch.float64) * scale).to(dtype)


def ill_conditioned(k: int, p: int, cond: float, seed: int) -> Tensor:
    """Rows spanning sqrt(cond) in singular values: the Gramian's condition number is ``cond``."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(p, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -0.5 * torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64)
    out: Tensor = u @ torch.diag(s) @ v.T
    return out


def hard_jacobians() -> dict[str, Tensor]:
    """Named float64 Jacobians, K from 1 to 64."""
    out = {f"random-K{k}": random_jacobian(k, 2 * k + 3, seed=k) for k in (1, 2, 3, 7, 16, 64)}
    out["ill-cond-1e8"] = ill_conditioned(8, 12, 1e8, seed=1)
    out["ill-cond-1e8-K24"] = ill_conditioned(24, 30, 1e8, seed=2)
    out["rank-deficient"] = random_jacobian(12, 3, seed=3) @ random_jacobian(3, 20, seed=4)
    base = random_jacobian(6, 15, seed=5)
    out["duplicated"] = torch.cat([base, base[:3]])
    out["opposite"] = torch.cat([base, -base[:2]])
    zero = random_jacobian(8, 15, seed=6)
    zero[[1, 4]] = 0
    out["zero-rows"] = zero
    g = random_jacobian(1, 10, seed=7)
    out["stationary"] = torch.cat([g, -g, 0.5 * g, random_jacobian(2, 10, seed=8)])
    out["all-zero"] = torch.zeros(5, 7, dtype=torch.float64)
    return out


HARD = hard_jacobians()
HARD_IDS = list(HARD)


def relative_error(ours: Tensor, ref: Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    scale = ref.abs().max().clamp(min=1e-30)
    return float((ours - ref).abs().max() / scale) if ref.numel() else 0.0


def cross_matrix(j: Tensor, seed: int) -> Tensor:
    """``J_1 J_2^T`` for two noisy copies of ``j`` (not symmetric): MoDo's and SDMGrad's input."""
    g = torch.Generator().manual_seed(seed)
    noise = 0.3 * j.abs().max().clamp(min=1.0)
    j1 = j + noise * torch.randn(j.shape, generator=g, dtype=j.dtype)
    j2 = j + noise * torch.randn(j.shape, generator=g, dtype=j.dtype)
    return j1 @ j2.T


NEW_GRAMIAN: list[Callable[[], Any]] = [
    A.Constant,
    A.Krum,
    A.CRMOGM,
    A.MoDo,
    A.SDMGrad,
    A.PCD,
]
NEW_JACOBIAN: list[Callable[[], Any]] = [A.TrimmedMean, A.ExcessMTL]


# --- all of them ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", HARD_IDS)
@pytest.mark.parametrize("make", NEW_GRAMIAN + NEW_JACOBIAN, ids=lambda f: f.__name__)
def test_defaults_give_finite_results_on_hard_inputs(
    make: Callable[[], Any], name: str, dtype: torch.dtype
) -> None:
    j = HARD[name].to(dtype)
    agg = make()
    if isinstance(agg, A.Krum) and j.shape[0] < 3:
        with pytest.raises(ValueError, match="K >= 3"):
            agg.weights(j @ j.T)
        return
    jacobian = isinstance(agg, A.JacobianAggregator)
    out = agg.aggregate(j) if jacobian else agg.weights(j @ j.T)
    expected_shape = (j.shape[1],) if jacobian else (j.shape[0],)
    assert out.shape == expected_shape
    assert out.dtype == dtype
    assert bool(out.isfinite().all())


@pytest.mark.parametrize("make", NEW_GRAMIAN, ids=lambda f: f.__name__)
def test_gramian_validation(make: Callable[[], A.GramianWeighting]) -> None:
    agg = make()
    with pytest.raises(ValueError, match="square"):
        agg.weights(torch.ones(3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        agg.weights(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(TypeError, match="floating"):
        agg.weights(torch.eye(3, dtype=torch.int64))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="weights"):
        A.Constant(torch.ones(2, 2))
    with pytest.raises(ValueError, match="n_byzantine"):
        A.Krum(n_byzantine=-1)
    with pytest.raises(ValueError, match="n_selected"):
        A.Krum(n_selected=0)
    with pytest.raises(ValueError, match="trim_number"):
        A.TrimmedMean(trim_number=-1)
    with pytest.raises(ValueError, match="robust_step_size"):
        A.ExcessMTL(robust_step_size=0.0)
    with pytest.raises(ValueError, match="n_warmup_steps"):
        A.ExcessMTL(n_warmup_steps=-1)
    with pytest.raises(ValueError, match="alpha"):
        A.CRMOGM(alpha=1.5)
    with pytest.raises(TypeError, match="cannot be smoothed"):
        A.CRMOGM(A.ConFIG())
    with pytest.raises(ValueError, match="gamma"):
        A.MoDo(gamma=0.0)
    with pytest.raises(ValueError, match="momentum"):
        A.SDMGrad(momentum=1.0)
    with pytest.raises(ValueError, match="n_iter"):
        A.SDMGrad(n_iter=0)
    with pytest.raises(ValueError, match="tau"):
        A.PCD(tau=1.5)
    with pytest.raises(ValueError, match="beta"):
        A.PCD(beta=1.0)


# --- Constant ---------------------------------------------------------------------------------


@needs_torchjd
@pytest.mark.parametrize("name", HARD_IDS)
def test_constant_matches_torchjd(name: str) -> None:
    import torchjd.aggregation as ta

    j = HARD[name]
    weights = torch.linspace(-1.0, 2.0, j.shape[0], dtype=torch.float64)
    assert torch.equal(A.Constant(weights).weights(j @ j.T), ta.ConstantWeighting(weights)(j))
    # Expected structure and linearity under scaling: the update is J^T w for any J.
    agg = A.Constant(weights)
    assert torch.equal((2 * j).T @ agg.weights(4 * j @ j.T), 2 * (j.T @ weights))


def test_constant_default_is_sum_and_checks_k() -> None:
    g = torch.eye(5, dtype=torch.float64)
    assert torch.equal(A.Constant().weights(g), A.Sum().weights(g))
    with pytest.raises(ValueError, match="K = 5"):
        A.Constant(torch.ones(3)).weights(g)
    state = A.Constant(torch.tensor([0.25, 0.75])).state_dict()
    loaded = A.Constant(torch.zeros(2))
    loaded.load_state_dict(state)
    assert torch.equal(loaded.weights(torch.eye(2)), torch.tensor([0.25, 0.75]))


# --- Krum -------------------------------------------------------------------------------------


@needs_torchjd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", HARD_IDS)
@pytest.mark.parametrize(("f", "n_selected"), [(0, 1), (1, 1), (1, 3), (4, 2)])
def test_krum_matches_torchjd(name: str, f: int, n_selected: int, dtype: torch.dtype) -> None:
    import torchjd.aggregation as ta

    j = HARD[name].to(dtype)
    g = j @ j.T
    k = g.shape[0]
    ours = A.Krum(n_byzantine=f, n_selected=n_selected)
    if k < f + 3 or k < n_selected:
        with pytest.raises(ValueError, match="K >="):
            ours.weights(g)
        return
    assert torch.equal(ours.weights(g), ta.KrumWeighting(f, n_selected)(g))  # exact


@pytest.mark.parametrize("name", [n for n in HARD_IDS if HARD[n].shape[0] >= 3])
def test_krum_structure_and_outlier_rejection(name: str) -> None:
    j = HARD[name]
    k = j.shape[0]
    f = (k - 3) // 2
    w = A.Krum().weights(j @ j.T)  # default: the largest f with 2 f + 2 < K
    assert torch.equal(w, A.Krum(n_byzantine=f).weights(j @ j.T))
    assert int((w > 0).sum()) == 1 and float(w.sum()) == 1.0
    if f >= 1:  # an adversarial row far from the others is never selected
        bad = torch.cat([j, 1e3 * j.abs().max().clamp(min=1) * torch.ones(1, j.shape[1])])
        n_sel = max(1, (k + 1) // 2)
        w_bad = A.Krum(n_byzantine=1, n_selected=n_sel).weights(bad @ bad.T)
        assert float(w_bad[-1]) == 0.0
        assert torch.allclose(w_bad.sum(), torch.tensor(1.0, dtype=w_bad.dtype))


def test_krum_is_permutation_equivariant() -> None:
    j = random_jacobian(9, 20, seed=21)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    agg = A.Krum(n_byzantine=2, n_selected=3)
    assert torch.equal(agg.weights((j @ j.T)[perm][:, perm]), agg.weights(j @ j.T)[perm])


# --- TrimmedMean ------------------------------------------------------------------------------


@needs_torchjd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", HARD_IDS)
@pytest.mark.parametrize("trim", [0, 1, 3])
def test_trimmed_mean_matches_torchjd(name: str, trim: int, dtype: torch.dtype) -> None:
    import torchjd.aggregation as ta

    j = HARD[name].to(dtype)
    ours = A.TrimmedMean(trim_number=trim)
    if j.shape[0] < 2 * trim + 1:
        with pytest.raises(ValueError, match="K >="):
            ours.aggregate(j)
        return
    assert torch.equal(ours.aggregate(j), ta.TrimmedMean(trim)(j))


@pytest.mark.parametrize("name", HARD_IDS)
def test_trimmed_mean_properties(name: str) -> None:
    j = HARD[name]
    k = j.shape[0]
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1))
    agg = A.TrimmedMean()
    assert torch.equal(agg.aggregate(j[perm]), agg.aggregate(j))  # permutation invariance
    if k < 10:  # the default trims floor(K / 10): nothing below K = 10, i.e. the mean
        torch.testing.assert_close(agg.aggregate(j), j.mean(dim=0), rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(agg.aggregate(j), A.TrimmedMean(trim_number=k // 10).aggregate(j))
    if k < 2:
        return
    # Each coordinate stays within the kept order statistics (robust to one huge row).
    out = A.TrimmedMean(trim_number=1).aggregate(torch.cat([j, 1e9 * torch.ones(1, j.shape[1])]))
    assert bool((out <= j.max(dim=0).values + 1e-12).all())


# --- stateful ones: step by step against TorchJD, and state round trips ------------------------


def sequence(j: Tensor, steps: int, seed: int) -> list[Tensor]:
    """``steps`` Jacobians near ``j`` (a training run's drift), deterministic."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.2 * j.abs().max().clamp(min=1.0)
    return [j + scale * torch.randn(j.shape, generator=g, dtype=j.dtype) for _ in range(steps)]


Feed = Callable[[Any, Tensor], Tensor]


def assert_state_round_trip(make: Callable[[], Any], feed: Feed, inputs: list[Tensor]) -> None:
    """Run half the inputs, save, load into a fresh module, run the rest on both: bitwise equal."""
    first = make()
    half = len(inputs) // 2
    for x in inputs[:half]:
        feed(first, x)
    state = first.state_dict()
    assert len(state) > 0
    second = make()
    second.load_state_dict(state)
    for key, value in state.items():
        assert torch.equal(second.state_dict()[key], value), key
    for x in inputs[half:]:
        assert torch.equal(feed(first, x), feed(second, x))


def assert_reset_restarts(make: Callable[[], Any], feed: Feed, inputs: list[Tensor]) -> None:
    agg = make()
    for x in inputs[:2]:
        feed(agg, x)
    agg.reset()
    fresh = make()
    for x in inputs:
        assert torch.equal(feed(agg, x), feed(fresh, x))


def _weigh(agg: A.GramianWeighting, g: Tensor) -> Tensor:
    return agg.weights(g)


def _agg(agg: A.JacobianAggregator, j: Tensor) -> Tensor:
    return agg.aggregate(j)


STATEFUL_IDS = ["random-K1", "random-K3", "random-K16", "random-K64", "ill-cond-1e8"]
STATEFUL_IDS += ["rank-deficient", "duplicated", "opposite", "zero-rows", "stationary", "all-zero"]


@needs_torchjd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("warmup", [0, 2])
@pytest.mark.parametrize("name", STATEFUL_IDS)
def test_excess_mtl_matches_torchjd_step_by_step(
    name: str, warmup: int, dtype: torch.dtype
) -> None:
    import torchjd.aggregation as ta

    ours = A.ExcessMTL(n_warmup_steps=warmup)
    ref = ta.ExcessMTL(n_warmup_steps=warmup)
    for j in sequence(HARD[name], 6, seed=31):
        j = j.to(dtype)
        if name == "zero-rows":
            j[[1, 4]] = 0  # keep them zero at every step: a task whose excess risk is always 0
        out, expected = ours.aggregate(j), ref(j)
        rtol = 1e-12 if dtype == torch.float64 else 1e-5
        assert relative_error(out, expected) <= rtol
        assert relative_error(ours.task_weights, ref.weighting._weights) <= rtol
        assert torch.allclose(
            ours.task_weights.sum().double(), torch.tensor(1.0, dtype=torch.float64)
        )


def test_excess_mtl_state() -> None:
    js = sequence(random_jacobian(4, 9, seed=32), 6, seed=33)
    make = lambda: A.ExcessMTL(n_warmup_steps=2)  # noqa: E731
    assert_state_round_trip(make, _agg, js)
    assert_reset_restarts(make, _agg, js)
    agg = make()
    for j in js:
        agg.aggregate(j)
    assert int(agg.steps) == len(js)
    agg.aggregate(random_jacobian(3, 9, seed=34))  # K changed: the statistics restart
    assert int(agg.steps) == 1 and agg.sq_grad_sum.shape == (3, 9)


@needs_torchjd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("name", STATEFUL_IDS)
def test_cr_mogm_matches_torchjd_step_by_step(name: str, alpha: float, dtype: torch.dtype) -> None:
    import torchjd.aggregation as ta

    k = HARD[name].shape[0]
    init = torch.linspace(0.0, 1.0, k, dtype=dtype)
    for initial in (None, init):
        ours = A.CRMOGM(A.UPGrad() if k <= 16 else A.Mean(), alpha=alpha, initial_weights=initial)
        inner = ta.UPGradWeighting() if k <= 16 else ta.MeanWeighting()
        ref = ta.CRMOGMWeighting(inner, alpha=alpha, initial_weights=initial)
        for j in sequence(HARD[name], 4, seed=35):
            g = (j @ j.T).to(dtype)
            expected = ref(g) if k <= 16 else ref(j.to(dtype))
            rtol = 1e-6 if dtype == torch.float64 else 1e-4  # UPGrad's QP tolerance
            assert relative_error(ours.weights(g), expected) <= rtol


def test_cr_mogm_default_smooths_mgda() -> None:
    js = sequence(random_jacobian(5, 12, seed=36), 5, seed=37)
    gs = [j @ j.T for j in js]
    agg, mgda = A.CRMOGM(), A.MGDA()
    smoothed = mgda.weights(gs[0])
    assert torch.equal(agg.weights(gs[0]), smoothed)  # lambda_0 = the first wrapped weights
    for g in gs[1:]:
        smoothed = 0.9 * smoothed + 0.1 * mgda.weights(g)
        torch.testing.assert_close(agg.weights(g), smoothed, rtol=1e-14, atol=1e-14)
    assert_state_round_trip(A.CRMOGM, _weigh, gs)
    assert_reset_restarts(A.CRMOGM, _weigh, gs)
    # The wrapped aggregator's state is part of the state_dict and of reset().
    wrapped = A.CRMOGM(A.PCD())
    wrapped.weights(gs[0])
    assert "aggregator.sq_norm_ema" in wrapped.state_dict()
    wrapped.reset()
    assert isinstance(wrapped.aggregator, A.PCD)
    assert wrapped.aggregator.sq_norm_ema.numel() == 0


def reference_simplex_projection(y: Tensor) -> Tensor:
    """Projection onto the simplex by bisection on the threshold (independent of the sort trick)."""
    y = y.double()
    lo, hi = float(y.min()) - 1.0, float(y.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((y - mid).clamp(min=0).sum()) > 1:
            lo = mid
        else:
            hi = mid
    return (y - (lo + hi) / 2).clamp(min=0)


@pytest.mark.parametrize("k", [1, 2, 3, 10, 64])
@pytest.mark.parametrize("spread", [1e-3, 1.0, 1e6])
def test_simplex_projection_matches_bisection(k: int, spread: float) -> None:
    g = torch.Generator().manual_seed(k)
    for y in (
        spread * torch.randn(k, generator=g, dtype=torch.float64),
        torch.full((k,), 3.0, dtype=torch.float64),
    ):
        out = project_to_simplex(y)
        torch.testing.assert_close(
            out, reference_simplex_projection(y).to(y.dtype), atol=1e-9 * max(spread, 1), rtol=0
        )
        assert bool((out >= 0).all()) and abs(float(out.sum()) - 1) < 1e-9


@needs_torchjd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", STATEFUL_IDS)
@pytest.mark.parametrize("method", ["MoDo", "SDMGrad"])
def test_modo_sdmgrad_match_torchjd_step_by_step(
    name: str, method: str, dtype: torch.dtype
) -> None:
    import torchjd.aggregation as ta

    ours = getattr(A, method)()
    ref = getattr(ta, f"{method}Weighting")()
    chaotic = method == "SDMGrad" and dtype == torch.float32
    for i, j in enumerate(sequence(HARD[name], 5, seed=38)):
        a = cross_matrix(j, seed=i).to(dtype)  # J_1 J_2^T: not symmetric
        if chaotic and ref._w is not None:
            # SDMGrad's 20 inner steps at lr = 10 amplify float32 rounding (TorchJD's own float32
            # run leaves its float64 one by up to 100% within 3 calls at K = 64): compare single
            # calls from TorchJD's state, to 1e-3. float64 and MoDo: whole runs, to 1e-9 / 1e-4.
            ours.task_weights = ref._w.clone()
        out, expected = ours.weights(a), ref(a)
        rtol = 1e-9 if dtype == torch.float64 else (1e-3 if chaotic else 1e-4)
        assert relative_error(out, expected) <= rtol, (i, out, expected)
        assert abs(float(out.sum()) - 1) < 1e-5 and bool((out >= 0).all())


def direct_modo(a_seq: list[Tensor], gamma: float = 0.1, rho: float = 0.1) -> list[Tensor]:
    """MoDo's update (JMLR 2024, Algorithm 1, the λ step) written directly, with the bisection
    projection."""
    lam = torch.full((a_seq[0].shape[0],), 1.0 / a_seq[0].shape[0], dtype=torch.float64)
    out = []
    for a in a_seq:
        lam = reference_simplex_projection(lam - gamma * (a @ lam + rho * lam))
        out.append(lam)
    return out


def test_modo_matches_direct_implementation() -> None:
    a_seq = [
        cross_matrix(j, seed=i)
        for i, j in enumerate(sequence(random_jacobian(6, 14, seed=39), 8, seed=40))
    ]
    agg = A.MoDo()
    for a, want in zip(a_seq, direct_modo(a_seq)):
        torch.testing.assert_close(agg.weights(a), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", ["MoDo", "SDMGrad"])
def test_modo_sdmgrad_state(method: str) -> None:
    a_seq = [
        cross_matrix(j, seed=i)
        for i, j in enumerate(sequence(random_jacobian(5, 12, seed=41), 6, seed=42))
    ]
    make = getattr(A, method)
    assert_state_round_trip(make, _weigh, a_seq)
    assert_reset_restarts(make, _weigh, a_seq)
    agg = make()
    agg.weights(a_seq[0])
    g3 = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
    # K changed: the iterate restarts from uniform, as a fresh aggregator's.
    assert torch.equal(agg.weights(g3), make().weights(g3))


# --- PCD --------------------------------------------------------------------------------------

PCD_IDS = [*STATEFUL_IDS, "ill-cond-1e8-K24"]


@needs_torchjd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("tau", [0.02, 0.5, "vector"])
@pytest.mark.parametrize("name", PCD_IDS)
def test_pcd_matches_torchjd_step_by_step(name: str, tau: float | str, dtype: torch.dtype) -> None:
    import torchjd.aggregation as ta

    k = HARD[name].shape[0]
    taus: float | Tensor = (
        torch.linspace(0.0, 1.0, max(k - 1, 0), dtype=torch.float64)
        if isinstance(tau, str)
        else tau
    )
    ours, ref = A.PCD(tau=taus), ta.PCDWeighting(tau=taus)
    for j in sequence(HARD[name], 4, seed=43):
        g = (j @ j.T).to(dtype)
        # Both solve in float64; float32 only rounds the input and output.
        assert relative_error(ours.weights(g), ref(g)) <= (1e-8 if dtype == torch.float64 else 1e-5)
    assert int(ours.fallbacks) == 0


def enumerate_pcd(j: Tensor, tau: float) -> Tensor:
    """PCD's first-call direction by enumerating working sets (the paper's Appendix B.2 method):
    for every subset S of secondaries, solve the equality-constrained problem and keep the KKT
    point; none means infeasible (the direction is then g_1)."""
    k = j.shape[0]
    g = j @ j.T
    s = 1 / (g.diagonal() + 1e-8).sqrt()  # the first call's debiased EMA is |g_i|^2 itself
    jn = j * s.unsqueeze(1)
    gn = jn @ jn.T
    h, lower = gn[1:, 1:], tau * gn.diagonal()[1:] - gn[1:, 0]
    tol = 1e-8 * float(gn.diagonal().max())
    best: Tensor | None = None
    for mask in range(2 ** (k - 1)):
        idx = [i for i in range(k - 1) if mask >> i & 1]
        mu = torch.zeros(k - 1, dtype=j.dtype)
        if idx:
            mu[idx] = torch.linalg.lstsq(h[idx][:, idx], lower[idx].unsqueeze(1)).solution[:, 0]
        slack = h @ mu - lower
        if bool((mu >= -tol).all()) and bool((slack >= -tol * (1 + mu.abs().sum())).all()):
            d = jn[0] + mu @ jn[1:]
            if best is None or float(d.norm()) < float(best.norm()) - 1e-9:
                best = d  # all KKT points give the same d; ties only from rounding
    if best is None:
        return j[0].clone()
    if float(best.norm()) <= 1e-7 * float(jn.norm()):
        return torch.zeros_like(best)
    scaled: Tensor = best * (j[0].norm() / best.norm())
    return scaled


@pytest.mark.parametrize("tau", [0.02, 0.3])
@pytest.mark.parametrize("name", [n for n in PCD_IDS if 2 <= HARD[n].shape[0] <= 9])
def test_pcd_matches_enumeration_of_working_sets(name: str, tau: float) -> None:
    j = HARD[name]
    if float(j[0].norm()) == 0:  # zero primary gradient: exactly zero weights
        assert torch.equal(A.PCD(tau=tau).weights(j @ j.T), torch.zeros(j.shape[0], dtype=j.dtype))
        return
    d = j.T @ A.PCD(tau=tau).weights(j @ j.T)
    want = enumerate_pcd(j, tau)
    assert relative_error(d, want) <= 1e-6
    if float(want.norm()) > 0:
        assert abs(float(d.norm()) / float(j[0].norm()) - 1) < 1e-9  # rescaled to |g_1|


@pytest.mark.parametrize("name", ["random-K7", "ill-cond-1e8", "opposite", "random-K16"])
def test_pcd_certificate_and_fallback(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    j = HARD[name]
    g = j @ j.T
    expected = A.PCD(tau=0.5).weights(g)
    # A solver that stops early (zero multipliers: constraints violated) must be caught by the
    # certificate and repaired by the fallback.
    monkeypatch.setattr(
        pcd_module,
        "solve_pcd_dual",
        lambda gn, taus, **_: (torch.zeros(gn.shape[0] - 1, dtype=gn.dtype), True),
    )
    agg = A.PCD(tau=0.5)
    w = agg.weights(g)
    assert relative_error(w, expected) <= 1e-9
    # Zero multipliers are right when no constraint binds; otherwise the fallback ran (once).
    assert int(agg.fallbacks) == int(bool((expected[1:] != 0).any()) or name == "opposite")


def test_pcd_certificate_values() -> None:
    g = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
    taus = torch.zeros(1, dtype=torch.float64)
    assert float(pcd_module.pcd_certificate(g, taus, torch.tensor([0.5]))) == 0.0
    assert float(pcd_module.pcd_certificate(g, taus, torch.tensor([0.0]))) > 0.1  # violated
    assert (
        float(pcd_module.pcd_certificate(g, taus, torch.tensor([1.0]))) > 0.1
    )  # slack > 0, mu > 0


def test_pcd_scale_invariance_of_secondaries() -> None:
    # Multiplying a secondary row by a constant at every call leaves the update unchanged (up to
    # eps): the constraints are on normalized gradients.
    js = sequence(random_jacobian(4, 10, seed=44), 4, seed=45)
    plain, scaled = A.PCD(tau=0.3, eps=0.0), A.PCD(tau=0.3, eps=0.0)
    for j in js:
        j2 = j.clone()
        j2[2] *= 1e3
        d1 = j.T @ plain.weights(j @ j.T)
        d2 = j2.T @ scaled.weights(j2 @ j2.T)
        assert relative_error(d2, d1) <= 1e-9


def test_pcd_state() -> None:
    gs = [j @ j.T for j in sequence(random_jacobian(5, 12, seed=46), 6, seed=47)]
    assert_state_round_trip(A.PCD, _weigh, gs)
    assert_reset_restarts(A.PCD, _weigh, gs)
    agg = A.PCD()
    agg.weights(gs[0])
    g3 = gs[0][:3, :3]
    assert torch.equal(agg.weights(g3), A.PCD().weights(g3))  # K changed: the EMA restarts
    # A non-finite Gramian (only reachable off the CPU, where it is not validated): NaN weights,
    # the state untouched.
    before = {k: v.clone() for k, v in agg.state_dict().items()}
    with torch.no_grad():
        out = agg._weights(torch.full((3, 3), float("nan"), dtype=torch.float64))
    assert bool(out.isnan().all())
    for key, value in agg.state_dict().items():
        assert torch.equal(value, before[key])


# --- through aggregate_backward -----------------------------------------------------------------


@pytest.mark.parametrize("make", NEW_GRAMIAN + NEW_JACOBIAN, ids=lambda f: f.__name__)
def test_aggregate_backward_writes_the_aggregated_gradient(make: Callable[[], Any]) -> None:
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh()).double()
    head = torch.nn.Linear(8, 6).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    y = (torch.rand(16, 6, generator=torch.Generator().manual_seed(1)) > 0.5).double()

    def losses() -> Tensor:
        logits = head(trunk(x))
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return bce.mean(dim=0)  # one loss per label: K = 6

    params = list(trunk.parameters())
    rows = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses()]
    jac = torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])
    reference = make()
    if isinstance(reference, A.JacobianAggregator):
        expected = reference.aggregate(jac)
    else:
        expected = jac.T @ reference.weights(jac @ jac.T)
    lg.aggregate_backward(losses(), shared=trunk, aggregator=make(), engine="exact")
    got = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


# --- hypothesis: random structure ---------------------------------------------------------------


@st.composite
def structured_jacobians(draw: st.DrawFn, max_k: int = 6) -> Tensor:
    """Small Jacobians with rows of very different scales, some duplicated, negated or zero."""
    k = draw(st.integers(2, max_k))
    p = draw(st.integers(1, 8))
    j = random_jacobian(k, p, seed=draw(st.integers(0, 10_000)))
    exponents = draw(st.lists(st.integers(-4, 4), min_size=k, max_size=k))
    j = j * torch.tensor([10.0**e for e in exponents], dtype=j.dtype).unsqueeze(1)
    for i in range(1, k):
        kind = draw(st.sampled_from(["keep", "keep", "dup", "neg", "zero"]))
        src = draw(st.integers(0, i - 1))
        if kind == "dup":
            j[i] = j[src]
        elif kind == "neg":
            j[i] = -j[src]
        elif kind == "zero":
            j[i] = 0
    return j


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=64))
def test_simplex_projection_hypothesis(values: list[float]) -> None:
    y = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(
        project_to_simplex(y), reference_simplex_projection(y), atol=1e-9, rtol=0
    )


@settings(max_examples=60, deadline=None)
@given(j=structured_jacobians(), tau=st.sampled_from([0.0, 0.02, 0.3, 1.0]))
def test_pcd_matches_enumeration_hypothesis(j: Tensor, tau: float) -> None:
    agg = A.PCD(tau=tau)
    d = j.T @ agg.weights(j @ j.T)
    if float(j[0].norm()) == 0:
        assert float(d.abs().max()) == 0.0
        return
    # 1e-6 relative to |g_1|: the enumeration's lstsq on rank-deficient sets is the looser side.
    assert float((d - enumerate_pcd(j, tau)).norm()) <= 1e-6 * float(j[0].norm())


@needs_torchjd
@settings(max_examples=60, deadline=None)
@given(j=structured_jacobians(max_k=9), f=st.integers(0, 3), n_selected=st.integers(1, 3))
def test_krum_matches_torchjd_hypothesis(j: Tensor, f: int, n_selected: int) -> None:
    import torchjd.aggregation as ta

    g = j @ j.T
    if g.shape[0] < max(f + 3, n_selected):
        return
    ours = A.Krum(n_byzantine=f, n_selected=n_selected).weights(g)
    assert torch.equal(ours, ta.KrumWeighting(f, n_selected)(g))
