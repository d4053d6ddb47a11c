"""The certificate of UPGrad's and DualProj's QP solve, checked against an independent reference.

A certified answer must satisfy the QP's KKT conditions to the documented tolerance (relative
natural residual <= 1e-9), measured here independently: an exhaustive active-set enumeration in
float64 (every subset of active bounds, K <= 6) gives the exact minimizer. The fast solver is
made slightly inexact (a relative error of 1e-7, as a solve stopped early would be); the
certificate must catch that and re-solve. With the certificate's tolerance loosened 1000x (a
planted bug: 1e-6 in ``_qp.LCP_TOL``) the inexact answer passes and these tests fail.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

import labelgrad as lg
from labelgrad.aggregators import _qp

A = lg.aggregators


def min_over_box(m: Tensor, lower: Tensor) -> Tensor:
    """argmin_{v >= lower} v^T M v by enumerating the active sets (float64, exact)."""
    k = m.shape[0]
    best: Tensor | None = None
    for size in range(k + 1):
        for active in itertools.combinations(range(k), size):
            v = lower.clone()
            free = [i for i in range(k) if i not in active]
            if free:
                act = list(active)
                rhs = -(m[free][:, act] @ lower[act]) if act else torch.zeros(len(free)).double()
                v[free] = torch.linalg.solve(m[free][:, free], rhs)
            grad = m @ v
            feasible = bool((v >= lower - 1e-12).all())
            stationary = all(abs(float(grad[i])) <= 1e-11 for i in free)
            signs = all(float(grad[i]) >= -1e-11 for i in active)
            better = best is None or float(v @ m @ v) < float(best @ m @ best)
            if feasible and stationary and signs and better:
                best = v
    assert best is not None
    return best


def reference(name: str, g: Tensor) -> Tensor:
    """TorchJD's problem: M = G / trace(G) + 1e-4 I, preference 1/K."""
    k = g.shape[0]
    m = g / g.trace() + 1e-4 * torch.eye(k, dtype=torch.float64)
    u = torch.full((k,), 1.0 / k, dtype=torch.float64)
    if name == "UPGrad":
        return sum(min_over_box(m, torch.diag(u)[i]) for i in range(k))  # type: ignore[return-value]
    return min_over_box(m, u)


def natural_residual(m: Tensor, lower: Tensor, v: Tensor) -> float:
    """|min(v - lower, M v)|_inf relative to |M lower|_inf + |v - lower|_inf max M_ii."""
    x, y = v - lower, m @ v
    scale = float((m @ lower).abs().max()) + float(x.abs().max()) * float(m.diagonal().max())
    return float(torch.minimum(x, y).abs().max()) / scale


def adversarial(seed: int, dominant: float = 1.0) -> Tensor:
    """Gramians of conflicting, nearly dependent and duplicated gradients (K = 5)."""
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(5, 6, generator=g, dtype=torch.float64)
    j[1] = -0.7 * j[0] + 1e-3 * j[1]  # almost opposite: a bound barely active
    j[3] = j[2]  # duplicated
    j[4] *= dominant  # one gradient far larger than the others
    return j @ j.T


def inexact_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast solve returns its answer with a relative error of 1e-7 (the robust one is exact)."""
    solve = _qp.solve_lcp

    def inexact(matrix: Tensor, q: Tensor, **options: object) -> tuple[Tensor, Tensor]:
        x, active = solve(matrix, q, **options)  # type: ignore[arg-type]
        if not options.get("single_pivot"):
            x = x * (1 + 1e-7)
        return x, active

    monkeypatch.setattr(_qp, "solve_lcp", inexact)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["UPGrad", "DualProj"])
def test_certified_answer_is_the_qp_solution(
    name: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = adversarial(seed)
    want = reference(name, g)
    inexact_solver(monkeypatch)
    agg = getattr(A, name)(warm_start=False)
    w = agg.weights(g)
    assert int(agg.diagnostics.fallbacks) > 0  # the certificate caught the inexact solve
    assert int(agg.diagnostics.uncertified) == 0
    # The documented tolerance, measured independently: the answer is the QP's to 1e-9.
    assert float((w - want).abs().max() / want.abs().max()) <= 1e-8, (w, want)


@pytest.mark.parametrize("dominant", [1.0, 1e3])
@pytest.mark.parametrize("seed", range(4))
def test_certified_projections_meet_the_documented_residual(
    seed: int, dominant: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # UPGrad's K problems and DualProj's one, each row's residual measured here, independently.
    g = adversarial(seed, dominant)
    k = g.shape[0]
    m = g / g.trace() + 1e-4 * torch.eye(k, dtype=torch.float64)
    u = torch.full((k,), 1.0 / k, dtype=torch.float64)
    inexact_solver(monkeypatch)
    lowers = torch.cat([torch.diag(u), u.unsqueeze(0)])
    diagnostics = A.SolverDiagnostics()
    v, _ = _qp.project_to_dual_cone(lowers, m, diagnostics=diagnostics)
    assert int(diagnostics.fallbacks) > 0
    for row in range(k + 1):
        assert natural_residual(m, lowers[row], v[row]) <= 1e-9, row
    v_dual = A.DualProj(warm_start=False).weights(g)
    assert natural_residual(m, u, v_dual) <= 1e-9
