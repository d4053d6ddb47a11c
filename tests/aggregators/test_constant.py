"""Constant (aggregators/constant.py): TorchJD 0.18's ConstantWeighting, its default and state."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from _aggregation_helpers import needs_torchjd
from aggregators.hard_jacobians import (
    HARD,
    HARD_IDS,
)

A = lg.aggregators


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
