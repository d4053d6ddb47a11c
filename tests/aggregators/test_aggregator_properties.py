"""Properties of every aggregator in ``lg.aggregators.__all__``, on adversarial Jacobians.

The properties are those of Quinton & Rey (Jacobian Descent, 2024), as TorchJD 0.18's own tests
assign them: *non-conflicting* (``J J^T w >= 0``), *permutation invariance*, *linear under
scaling* (``diag(c) J -> update`` linear in ``c``), *strong stationarity* (a non-zero update
whenever no positive combination of the rows is 0), and the expected structure (finite (K,)
weights on G's dtype and device) for all. An aggregator added to ``__all__`` later is picked up
automatically with the structure property; list its other properties in ``PROPERTIES``.

Tolerances (stated per check below): float64 answers to 1e-9 of the problem's scale, float32 to
1e-4; the dual-cone weightings solve TorchJD's regularized problem (``G / trace(G) + 1e-4 I``), so
non-conflict for them allows the regularization term; MGDA stops at Frank-Wolfe gap
``2 epsilon max_i G_ii`` (its certificate), which bounds how much it may conflict.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import labelgrad as lg
from _aggregation_helpers import one_thread
from aggregators.gramian_generators import CASES, NON_STRONG, STATIONARY, case_ids, jacobian

A = lg.aggregators

NAMES = sorted(A.available())

NC, PERM, LUS, STRONG = "non_conflicting", "permutation", "linear_scaling", "strong_stationarity"
#: Which property each aggregator has (its paper / TorchJD 0.18's tests). Random ones
#: (Random, PCGrad's orders, GradDrop) and stateful ones (GradVac) are not permutation-tested.
PROPERTIES: dict[str, set[str]] = {
    "Mean": {PERM, LUS, STRONG},
    "Sum": {PERM, LUS, STRONG},
    "UPGrad": {NC, PERM, LUS, STRONG},
    "DualProj": {NC, PERM, STRONG},
    "MGDA": {NC, PERM},
    "CAGrad": {PERM},  # non-conflicting only for c >= 1: see CAGRAD_NC
    "IMTLG": {PERM},
    "AlignedMTL": {PERM},
    "NashMTL": {NC, PERM},
    "FairGrad": {NC, PERM},
    "ConFIG": {NC, PERM},
    "PCGrad": {LUS},  # for fixed visiting orders
    "Random": set(),
    "GradVac": set(),
    "GradDrop": set(),
    "TrimmedMean": {PERM},
    "Krum": set(),  # TorchJD tests its structure only
}
#: The fewest rows an aggregator is defined for (Krum with f = 0 Byzantine rows needs f + 3).
MIN_K = {"Krum": 3}
DTYPES = [torch.float64, torch.float32]
#: Cases on which TorchJD's regularization is negligible (linear under scaling is exact there
#: up to ``reg_eps``).
LUS_CASES = [c for c in CASES if c[0] in {"k1", "typical", "duplicated", "zero_rows"}]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def make(name: str) -> A.Aggregator:
    cls = getattr(A, name)
    try:
        if name in ("PCGrad", "Random", "GradDrop"):  # fixed randomness: reproducible checks
            return cls(generator=torch.Generator().manual_seed(0))  # type: ignore[no-any-return]
        return cls()  # type: ignore[no-any-return]
    except TypeError as error:
        pytest.skip(f"{name} does not construct without arguments: {error}")


def update(name: str, j: Tensor, agg: A.Aggregator | None = None) -> tuple[Tensor, Tensor | None]:
    """(update J^T w, weights or None) from a fresh instance (no history)."""
    agg = make(name) if agg is None else agg
    if isinstance(agg, A.JacobianAggregator):
        assert not isinstance(agg, A.GramianWeighting)
        return agg.aggregate(j), None
    w = agg.weights(j @ j.T)
    return j.T @ w, w


def rel(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-4


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
@pytest.mark.parametrize("name", NAMES)
def test_expected_structure_and_non_conflict(name: str, case: tuple, dtype: torch.dtype) -> None:
    if case[2] < MIN_K.get(name, 1):
        pytest.skip(f"{name} needs K >= {MIN_K[name]}")
    j = jacobian(case, dtype)
    if case[2] > 64 and name in ("CAGrad", "NashMTL", "GradVac"):
        j = j[:64]  # their solvers are O(K^3) per iteration: K = 64 keeps the suite fast
    upd, w = update(name, j)
    assert upd.shape == (j.shape[1],) and upd.dtype == dtype
    assert bool(upd.isfinite().all()), upd
    if w is not None:
        assert w.shape == (j.shape[0],) and w.dtype == dtype and bool(w.isfinite().all())
    # ConFIG's pseudo-inverse direction is non-conflicting where it can solve J d = 1 direction:
    # linearly independent rows (TorchJD tests it on such typical matrices only).
    rank = int(torch.linalg.matrix_rank(j.double(), rtol=1e3 * torch.finfo(dtype).eps))
    dependent = rank < j.shape[0] or case[0] in STATIONARY
    if NC in PROPERTIES.get(name, set()) and not (name == "ConFIG" and dependent):
        assert_non_conflicting(name, j, upd, w)


def assert_non_conflicting(name: str, j: Tensor, upd: Tensor, w: Tensor | None) -> None:
    jd = j.double()
    g = jd @ jd.T
    inner = jd @ upd.double()
    scale = float(g.diagonal().max()) * (1.0 if w is None else float(w.double().abs().sum()))
    tol = torch.full_like(inner, rel(j.dtype) * scale + 1e-300)
    if name in ("UPGrad", "DualProj"):
        assert w is not None  # the regularized problem: G w >= -reg_eps trace(G) w
        tol = tol + 1e-4 * float(g.trace()) * w.double().abs()
    elif name == "MGDA":
        tol = tol + 2 * 1e-3 * float(g.diagonal().max())
    elif name == "ConFIG":
        tol = tol + 1e-6 * float(jd.norm()) * float(upd.double().norm())
    assert bool((inner >= -tol).all()), (inner.min(), tol.min())


@pytest.mark.parametrize("c", [1.0, 2.0])
@pytest.mark.parametrize("case", CASES[:-1], ids=case_ids(CASES[:-1]))
def test_cagrad_is_non_conflicting_for_c_at_least_one(case: tuple, c: float) -> None:
    # Tolerance: the certificate bounds the Frank-Wolfe gap by 1e-6 of the gradient's scale.
    j = jacobian(case, torch.float64)
    w = A.CAGrad(c=c).weights(j @ j.T)
    inner = j @ (j.T @ w)
    assert bool((inner >= -1e-5 * float((j @ j.T).diagonal().max()) * float(w.abs().sum())).all())


def _with_property(prop: str) -> list[str]:
    return [n for n in NAMES if prop in PROPERTIES.get(n, set())]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES[:-1], ids=case_ids(CASES[:-1]))
@pytest.mark.parametrize("name", _with_property(PERM))
def test_permutation_invariance(name: str, case: tuple, dtype: torch.dtype) -> None:
    # The update J^T w must not depend on the rows' order: to 1e-7 relative (float64; MGDA's
    # Frank-Wolfe breaks ties in index order: 5e-4 as TorchJD) or 1e-3 (float32).
    # float32 cannot represent a Gramian of condition 1e8 (> 1 / eps): its rank cut-offs
    # (IMTL-G, Aligned-MTL) and ConFIG with 0 in the hull are then order-dependent.
    if dtype == torch.float32 and case[0] == "ill_conditioned_1e8":
        pytest.skip("cond(G) = 1e8 exceeds float32's precision")
    if name == "ConFIG" and case[0] in STATIONARY:
        pytest.skip("ConFIG's direction is not determined when 0 is in the hull")
    if case[2] < MIN_K.get(name, 1):
        pytest.skip(f"{name} needs K >= {MIN_K[name]}")
    j = jacobian(case, dtype)
    perm = torch.randperm(j.shape[0], generator=torch.Generator().manual_seed(1))
    upd, _ = update(name, j)
    upd_perm, _ = update(name, j[perm])
    diff = float((upd - upd_perm).double().norm())
    if name == "MGDA":
        # Both are within Frank-Wolfe gap <= 2 eps max G_ii of the unique min-norm update u*,
        # and |u|^2 - |u*|^2 >= |u - u*|^2 on the hull: |u1 - u2| <= 2 sqrt(gap).
        gap = 2 * 1e-3 * float((j.double() @ j.double().T).diagonal().max())
        assert diff <= 2 * gap**0.5 * (1 + rel(dtype) * 1e3)
        return
    loose = name == "CAGrad" or case[0] == "ill_conditioned_1e8"
    tol = (5e-4 if loose else 1e-7) if dtype == torch.float64 else 1e-3
    scale = float(upd.double().norm()) + 1e-12 * float(j.double().norm())
    assert diff <= tol * scale


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LUS_CASES, ids=case_ids(LUS_CASES))
@pytest.mark.parametrize("name", _with_property(LUS))
def test_linear_under_scaling(name: str, case: tuple, dtype: torch.dtype) -> None:
    # update(diag(a c1 + b c2) J) = a update(diag(c1) J) + b update(diag(c2) J): exactly (1e-9
    # float64, 1e-4 float32) for the closed forms; UPGrad to 1e-2 relative, TorchJD's own
    # tolerance (its ridge, 1e-4 of the trace, is not scale-invariant: ~2e-3 here).
    j = jacobian(case, dtype)
    g = torch.Generator().manual_seed(2)
    c1, c2 = (torch.rand(j.shape[0], 1, generator=g, dtype=dtype) + 0.1 for _ in range(2))
    a, b = 0.7, 1.3
    u1, _ = update(name, c1 * j)
    u2, _ = update(name, c2 * j)
    mix, _ = update(name, (a * c1 + b * c2) * j)
    tol = 1e-2 if name == "UPGrad" else rel(dtype) * 10
    expected = a * u1 + b * u2
    assert float((mix - expected).double().norm()) <= tol * float(expected.double().norm())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", NON_STRONG, ids=case_ids(NON_STRONG))
@pytest.mark.parametrize("name", _with_property(STRONG))
def test_strong_stationarity(name: str, case: tuple, dtype: torch.dtype) -> None:
    # Not strongly stationary (no positive combination of the rows is 0): the update is not 0.
    j = jacobian(case, dtype)
    upd, _ = update(name, j)
    assert float(upd.double().norm()) > 1e-3 * float(j.double().norm())


HAS_QUADPROG = all(
    importlib.util.find_spec(m) is not None for m in ("torchjd", "quadprog", "qpsolvers")
)
#: Our name -> TorchJD 0.18's weighting, where it has the aggregator and needs no extra solver.
TORCHJD = {
    "Mean": "MeanWeighting",
    "Sum": "SumWeighting",
    "UPGrad": "UPGradWeighting",
    "DualProj": "DualProjWeighting",
    "MGDA": "MGDAWeighting",
    "IMTLG": "IMTLGWeighting",
    "AlignedMTL": "AlignedMTLWeighting",
}


@pytest.mark.skipif(not HAS_QUADPROG, reason="torchjd 0.18 + quadprog needed")
@pytest.mark.parametrize("case", CASES[:-1], ids=case_ids(CASES[:-1]))
@pytest.mark.parametrize("name", [n for n in NAMES if n in TORCHJD])
def test_agrees_with_torchjd_on_adversarial_gramians(name: str, case: tuple) -> None:
    # float64, same Gramian: updates to 1e-6 relative (quadprog's and our certificates are
    # both ~1e-9; IMTL-G's pinv and Aligned-MTL's rank cut decide identically).
    import torchjd.aggregation as ta

    j = jacobian(case, torch.float64)
    gram = j @ j.T
    agg = make(name)
    ours = agg.weights(gram)
    theirs = getattr(ta, TORCHJD[name])()(gram)
    if name == "MGDA" and int(agg.diagnostics.fallbacks) > 0:
        # TorchJD's Frank-Wolfe answer failed our certificate: ours is the exact min-norm point.
        assert float((j.T @ ours).norm()) <= float((j.T @ theirs).norm()) * (1 + 1e-9)
        return
    scale = float((j.T @ theirs).norm()) + 1e-9 * float(j.norm())
    assert float((j.T @ (ours - theirs)).norm()) <= 1e-6 * scale
