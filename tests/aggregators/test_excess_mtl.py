"""ExcessMTL (aggregators/excess_mtl.py): TorchJD 0.18 step by step from the same state, and its
state."""

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
    aggregate,
    assert_reset_restarts,
    assert_state_round_trip,
    random_jacobian,
    relative_error,
    sequence,
)

A = lg.aggregators


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
    assert_state_round_trip(make, aggregate, js)
    assert_reset_restarts(make, aggregate, js)
    agg = make()
    for j in js:
        agg.aggregate(j)
    assert int(agg.steps) == len(js)
    agg.aggregate(random_jacobian(3, 9, seed=34))  # K changed: the statistics restart
    assert int(agg.steps) == 1 and agg.sq_grad_sum.shape == (3, 9)
