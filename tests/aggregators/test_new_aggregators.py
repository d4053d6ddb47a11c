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

import pytest
import torch
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
    return u @ torch.diag(s) @ v.T


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


NEW_GRAMIAN: list[Callable[[], A.Aggregator]] = [
    A.Constant,
    A.Krum,
    A.CRMOGM,
    A.MoDo,
    A.SDMGrad,
    A.PCD,
]
NEW_JACOBIAN: list[Callable[[], A.JacobianAggregator]] = [A.TrimmedMean, A.ExcessMTL]


# --- all of them ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", HARD_IDS)
@pytest.mark.parametrize("make", NEW_GRAMIAN + NEW_JACOBIAN, ids=lambda f: f.__name__)
def test_defaults_give_finite_results_on_hard_inputs(
    make: Callable[[], A.Aggregator], name: str, dtype: torch.dtype
) -> None:
    j = HARD[name].to(dtype)
    agg = make()
    if isinstance(agg, A.Krum) and j.shape[0] < 3:
        with pytest.raises(ValueError, match="K >= 3"):
            agg.weights(j @ j.T)
        return
    out = agg.aggregate(j) if agg.requires_jacobian else agg.weights(j @ j.T)
    expected_shape = (j.shape[1],) if agg.requires_jacobian else (j.shape[0],)
    assert out.shape == expected_shape
    assert out.dtype == dtype
    assert bool(out.isfinite().all())


@pytest.mark.parametrize("make", NEW_GRAMIAN, ids=lambda f: f.__name__)
def test_gramian_validation(make: Callable[[], A.Aggregator]) -> None:
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
    with pytest.raises(TypeError, match="Gramian Aggregator"):
        A.CRMOGM(A.ConFIG())  # type: ignore[arg-type]
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
