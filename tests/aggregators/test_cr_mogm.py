"""CRMOGM (aggregators/cr_mogm.py): TorchJD 0.18 step by step, the default (smoothed MGDA), and
the wrapped aggregator's state."""

from __future__ import annotations

import pytest
import torch

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
    weigh,
)

A = lg.aggregators


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
    assert_state_round_trip(A.CRMOGM, weigh, gs)
    assert_reset_restarts(A.CRMOGM, weigh, gs)
    # The wrapped aggregator's state is part of the state_dict and of reset().
    wrapped = A.CRMOGM(A.PCD())
    wrapped.weights(gs[0])
    assert "aggregator.sq_norm_ema" in wrapped.state_dict()
    wrapped.reset()
    assert isinstance(wrapped.aggregator, A.PCD)
    assert wrapped.aggregator.sq_norm_ema.numel() == 0
