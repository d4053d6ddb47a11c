"""CAGrad (aggregators/cagrad.py): regression test for the solver defects of issue 12."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import labelgrad as lg
from _aggregation_helpers import one_thread

A = lg.aggregators


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_cagrad_large_c_with_zero_in_the_hull_gives_zero() -> None:
    j = torch.tensor([[-3.0], [-3.0], [1.0]], dtype=torch.float64)
    w = A.CAGrad(c=2.0).weights(j @ j.T)
    torch.testing.assert_close(j.T @ w, torch.zeros(1, dtype=torch.float64), atol=1e-6, rtol=0)


def strongly_stationary(k: int, p: int, seed: int) -> torch.Tensor:
    """Random rows with ``J^T w = 0`` for a ``w`` with entries in [0.5, 1.5] (float64)."""
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(k, p, generator=g, dtype=torch.float64) * (
        1 + 4 * torch.rand(k, 1, generator=g, dtype=torch.float64)
    )
    w = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    return j - torch.outer(w, w @ j) / (w @ w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("c", [1.0, 2.0])
@pytest.mark.parametrize("shape", [(2, 5), (5, 3), (7, 20), (9, 4), (16, 40)], ids=str)
def test_cagrad_strongly_stationary_gives_zero(
    shape: tuple[int, int], c: float, dtype: torch.dtype
) -> None:
    # 0 is strictly inside the hull and c >= 1: the ball around g_0 contains 0's neighbourhood
    # direction set, so the answer is 0 (TorchJD's strong-stationarity property). A float32 G of
    # such a J is indefinite at ~eps |g|^2: the answer must not be a rounding-made direction
    # (the old code returned updates conflicting with a row by 1.5 |g|^2 here).
    for seed in range(4):
        j = strongly_stationary(*shape, seed=seed).to(dtype)
        agg = A.CAGrad(c=c)
        w = agg.weights(j @ j.T)
        update = j.double().T @ w.double()
        assert float(update.norm()) <= 1e-6 * float(j.double().norm()), (seed, w)
        assert int(agg.diagnostics.uncertified) == 0
