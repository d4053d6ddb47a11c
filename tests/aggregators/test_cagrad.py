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
