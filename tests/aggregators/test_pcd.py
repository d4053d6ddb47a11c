"""PCD (aggregators/pcd.py): TorchJD 0.18 step by step, an enumeration of working sets (the
paper's Appendix B.2), its certificate and fallback, scale invariance and state."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import labelgrad as lg
from _aggregation_helpers import needs_torchjd
from aggregators.hard_jacobians import (
    DTYPE_IDS,
    DTYPES,
    HARD,
    STATEFUL_IDS,
    assert_reset_restarts,
    assert_state_round_trip,
    random_jacobian,
    relative_error,
    sequence,
    structured_jacobians,
    weigh,
)
from labelgrad.aggregators import pcd as pcd_module

A = lg.aggregators


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
    assert_state_round_trip(A.PCD, weigh, gs)
    assert_reset_restarts(A.PCD, weigh, gs)
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
