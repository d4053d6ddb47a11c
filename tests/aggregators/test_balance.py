"""NashMTL and FairGrad (aggregators/balance.py): regression tests for the solver defects of
issue 12 (stationary and opposite gradients)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import labelgrad as lg
from _aggregation_helpers import one_thread

A = lg.aggregators


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def stationary_jacobian(k: int = 20, p: int = 100, seed: int = 0) -> Tensor:
    """K rows whose convex hull contains 0 (the last row is minus a positive mix of the others)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k - 1, p, generator=g, dtype=torch.float64)
    return torch.cat([a, -a.sum(0, keepdim=True) / 3])


def test_fairgrad_small_alpha_float32_stationary_is_certified_and_non_conflicting() -> None:
    # 0 is in the hull of J's rows, but not of the float32-rounded Gramian's: a (huge-weight)
    # solution exists for what the aggregator sees. The old Newton stopped unconverged with
    # G w in [-8e-5, 9e-5]. Non-conflict is checked on the Gramian the aggregator receives,
    # in float64 arithmetic: a Gramian weighting cannot know J beyond it.
    j = stationary_jacobian().float()
    g = j @ j.T
    agg = A.FairGrad(alpha=0.1)
    w = agg.weights(g)
    assert w.dtype == torch.float32
    assert bool(w.isfinite().all())
    assert bool(((g.double() @ w.double()) >= 0).all())
    assert int(agg.diagnostics.uncertified) == 0
    assert int(agg.diagnostics.problems) == 1


def test_fairgrad_float64_exactly_stationary_gives_zero() -> None:
    j = stationary_jacobian()
    agg = A.FairGrad(alpha=0.1)
    w = agg.weights(j @ j.T)
    update = j.T @ w
    assert bool(((j @ update) >= -1e-9 * float(j.norm()) ** 2).all())
    assert float(update.norm()) <= 1e-6 * float(j.norm())
    assert int(agg.diagnostics.uncertified) == 0


@pytest.mark.parametrize("make", [A.NashMTL, A.FairGrad], ids=["NashMTL", "FairGrad"])
def test_opposite_gradients_give_finite_documented_weights(make: type[A.GramianWeighting]) -> None:
    j = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    w = make().weights(j @ j.T)
    assert bool(w.isfinite().all())
    torch.testing.assert_close(w, torch.zeros(2, dtype=torch.float64))  # Pareto-stationary: 0
