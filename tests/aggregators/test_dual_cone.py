"""UPGrad and DualProj (aggregators/dual_cone.py): regression tests for the solver defects of
issue 12 (each failed before the certified solvers).

Tolerances: the dual-cone weightings solve on ``Ĝ = G / trace(G) + reg_eps I`` (TorchJD's
problem), so non-conflict is checked on that regularized Gramian, to 1e-9 of its scale; agreement
with TorchJD's quadprog to 1e-6 relative.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import labelgrad as lg
from _aggregation_helpers import needs_quadprog, one_thread

A = lg.aggregators


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


#: The 4 x 5 Jacobian of issue 12 on which the uncertified active-set solver cycled.
CYCLING_J = torch.tensor(
    [
        [-2.7, -6.0, 0.7, 1.9, 4.6],
        [-0.7, -1.2, 1.8, 0.4, 1.8],
        [1.6, 3.9, 1.3, -1.2, -2.0],
        [0.6, 1.4, -0.1, -0.5, -1.1],
    ],
    dtype=torch.float64,
)


def regularized(gramian: Tensor, reg_eps: float = 1e-4) -> Tensor:
    """TorchJD's problem matrix: ``G / trace(G) + reg_eps I``."""
    g = gramian.to(torch.float64)
    return g / g.trace() + reg_eps * torch.eye(g.shape[0], dtype=torch.float64)


def assert_non_conflicting(gramian: Tensor, weights: Tensor, tol: float = 1e-9) -> None:
    g = regularized(gramian)
    gw = g @ weights.to(torch.float64)
    assert bool((gw >= -tol * (1 + weights.abs().max())).all()), gw


def spread_jacobian(k: int, seed: int) -> Tensor:
    """Nearly rank-2 or rank-3 rows (plus 10% noise) whose norms span two orders of magnitude.

    Ill-conditioned Gramians of this kind made the old active-set solver cycle about 1% of the
    time (e.g. seeds 16, 131, 172 for UPGrad and 53, 677 for DualProj).
    """
    g = torch.Generator().manual_seed(seed)
    r = 2 + seed % 2
    scale = 10.0 ** (2 * torch.rand(k, 1, generator=g, dtype=torch.float64) - 1)
    mix = torch.randn(k, r, generator=g, dtype=torch.float64) * scale
    basis = torch.randn(r, 5, generator=g, dtype=torch.float64)
    return mix @ basis + 0.1 * torch.randn(k, 5, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("method", ["UPGrad", "DualProj"])
def test_cycling_example_is_non_conflicting(method: str) -> None:
    g = CYCLING_J @ CYCLING_J.T
    assert_non_conflicting(g, getattr(A, method)().weights(g))


@needs_quadprog
def test_cycling_example_matches_torchjd() -> None:
    import torchjd.aggregation as ta

    g = CYCLING_J @ CYCLING_J.T
    w = A.UPGrad().weights(g)
    reference = ta.UPGradWeighting()(g)
    assert abs(float(reference[0]) - 0.4483) < 1e-4
    torch.testing.assert_close(w, reference, rtol=1e-6, atol=1e-8)


@needs_quadprog
@pytest.mark.parametrize("method", ["UPGrad", "DualProj"])
def test_randomized_spread_jacobians_match_torchjd(method: str) -> None:
    # About 1% of these Jacobians made the old solver cycle: 800 draws hit several.
    import torchjd.aggregation as ta

    ours, theirs = getattr(A, method)(), getattr(ta, f"{method}Weighting")()
    for seed in range(800):
        j = spread_jacobian(4 + seed % 3, seed)
        g = j @ j.T
        w = ours.weights(g)
        assert_non_conflicting(g, w)
        reference = theirs(g)
        scale = float(reference.abs().max())
        torch.testing.assert_close(w, reference, rtol=1e-6, atol=1e-7 * scale, msg=f"seed {seed}")


@pytest.mark.parametrize("method", ["UPGrad", "DualProj"])
def test_same_gramian_same_weights_whatever_the_history(method: str) -> None:
    g = CYCLING_J @ CYCLING_J.T
    fresh = getattr(A, method)(warm_start=False).weights(g)
    warm = getattr(A, method)()
    for seed in range(40):  # other Gramians first: their active sets become the warm start
        j = spread_jacobian(4, seed)
        warm.weights(j @ j.T)
        torch.testing.assert_close(warm.weights(g), fresh, rtol=1e-9, atol=1e-12)


def test_answer_does_not_depend_on_the_iteration_limit() -> None:
    from labelgrad.aggregators._qp import project_to_dual_cone

    g = regularized(CYCLING_J @ CYCLING_J.T)
    lower = torch.eye(4, dtype=torch.float64) / 4
    answers = [project_to_dual_cone(lower, g, max_iters=n)[0] for n in (1, 2, 3, 5, 50)]
    for answer in answers[:-1]:
        torch.testing.assert_close(answer, answers[-1], rtol=1e-9, atol=1e-12)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, torch
    import labelgrad as lg
    torch.set_num_threads(1)
    k = 2000
    g = torch.Generator().manual_seed(0)
    # Gradients that mostly agree, and one that conflicts with all of them: its QP has K - 1 free
    # coordinates, which is what made the batched systems K x K x K.
    j = torch.randn(k, 64, generator=g, dtype=torch.float64) * 0.1 + 1.0
    j[0] = -j[1:].mean(0) * 3
    gram = j @ j.T
    agg = lg.aggregators.UPGrad(warm_start=False)
    agg.weights(gram[:8, :8])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    w = agg.weights(gram)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024, bool(w.isfinite().all()))
    """
)


def test_upgrad_k2000_memory_is_quadratic() -> None:
    # ru_maxrss (KiB on Linux) in a fresh process: the solve's own peak above the baseline.
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak, finite = done.stdout.split()
    assert finite == "True"
    assert int(peak) <= 2 * 2**30, f"peak {int(peak) / 2**30:.2f} GiB"


@pytest.mark.parametrize("name", ["UPGrad", "DualProj"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_ridge_on_a_rank_deficient_gramian_gives_the_limit_not_nan(name: str, seed: int) -> None:
    # reg_eps = 0 on a rank-3 G of K = 40 left the systems singular: NaN weights (13 of 40
    # problems uncertified). The solver keeps a ridge of 10 K eps of float64; the direction is
    # the limit of small ridges (the weights themselves are not unique for a singular G).
    gen = torch.Generator().manual_seed(seed)
    j = torch.rand(40, 3, generator=gen, dtype=torch.float64)
    j = j @ torch.randn(3, 20, generator=gen, dtype=torch.float64)
    j[::5] -= 0.5 * j[1::5]  # some conflicts, so the projections are not the mean
    g = j @ j.T
    exact = getattr(lg.aggregators, name)(reg_eps=0.0)
    w = exact.weights(g)
    assert bool(w.isfinite().all())
    assert int(exact.diagnostics.uncertified) == 0
    limit = j.T @ getattr(lg.aggregators, name)(reg_eps=1e-12).weights(g)
    direction = j.T @ w
    assert float(limit.norm()) > 0.1 * float(j.norm())  # not a trivial zero direction
    torch.testing.assert_close(direction, limit, rtol=0, atol=1e-9 * float(j.norm()))


@needs_quadprog
@pytest.mark.parametrize("method", ["UPGrad", "DualProj"])
@pytest.mark.parametrize("k", [3, 16, 40, 100])
def test_zero_rows_solved_apart_match_torchjd(method: str, k: int) -> None:
    # The sample-Gramian engine's class groups absent from a batch give exact zero rows; they
    # separate from the QPs, which are then solved on the other rows only.
    import torchjd.aggregation as ta

    gen = torch.Generator().manual_seed(k)
    j = torch.randn(k, 30, generator=gen, dtype=torch.float64)
    half = k // 2
    j[half : 2 * half] -= 0.7 * j[:half]  # conflicts
    zero = torch.randperm(k, generator=gen)[: max(1, k // 8)]
    j[zero] = 0.0
    g = j @ j.T
    pref = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5
    for kwargs in ({}, {"pref_vector": pref}):
        w = getattr(A, method)(**kwargs).weights(g)
        reference = getattr(ta, f"{method}Weighting")(**kwargs)(g)
        scale = float(reference.abs().max())
        torch.testing.assert_close(w, reference, rtol=1e-6, atol=1e-7 * scale)
        assert_non_conflicting(g, w)


@pytest.mark.parametrize("method", ["UPGrad", "DualProj"])
def test_a_gramian_of_zero_rows_only_gives_the_preference(method: str) -> None:
    pref = torch.tensor([0.2, 0.0, 0.5], dtype=torch.float64)
    w = getattr(A, method)(pref_vector=pref).weights(torch.zeros(3, 3, dtype=torch.float64))
    assert torch.equal(w, pref)
