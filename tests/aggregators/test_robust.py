"""Krum and TrimmedMean (aggregators/robust.py): TorchJD 0.18's answers (exact) and robustness."""

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
    HARD_IDS,
    random_jacobian,
    structured_jacobians,
)

A = lg.aggregators


@needs_torchjd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", HARD_IDS)
@pytest.mark.parametrize(("f", "n_selected"), [(0, 1), (1, 1), (1, 3), (4, 2)])
def test_krum_matches_torchjd(name: str, f: int, n_selected: int, dtype: torch.dtype) -> None:
    import torchjd.aggregation as ta

    j = HARD[name].to(dtype)
    g = j @ j.T
    k = g.shape[0]
    ours = A.Krum(n_byzantine=f, n_selected=n_selected)
    if k < f + 3 or k < n_selected:
        with pytest.raises(ValueError, match="K >="):
            ours.weights(g)
        return
    assert torch.equal(ours.weights(g), ta.KrumWeighting(f, n_selected)(g))  # exact


@pytest.mark.parametrize("name", [n for n in HARD_IDS if HARD[n].shape[0] >= 3])
def test_krum_structure_and_outlier_rejection(name: str) -> None:
    j = HARD[name]
    k = j.shape[0]
    f = (k - 3) // 2
    w = A.Krum().weights(j @ j.T)  # default: the largest f with 2 f + 2 < K
    assert torch.equal(w, A.Krum(n_byzantine=f).weights(j @ j.T))
    assert int((w > 0).sum()) == 1 and float(w.sum()) == 1.0
    if f >= 1:  # an adversarial row far from the others is never selected
        bad = torch.cat([j, 1e3 * j.abs().max().clamp(min=1) * torch.ones(1, j.shape[1])])
        n_sel = max(1, (k + 1) // 2)
        w_bad = A.Krum(n_byzantine=1, n_selected=n_sel).weights(bad @ bad.T)
        assert float(w_bad[-1]) == 0.0
        assert torch.allclose(w_bad.sum(), torch.tensor(1.0, dtype=w_bad.dtype))


def test_krum_is_permutation_equivariant() -> None:
    j = random_jacobian(9, 20, seed=21)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    agg = A.Krum(n_byzantine=2, n_selected=3)
    assert torch.equal(agg.weights((j @ j.T)[perm][:, perm]), agg.weights(j @ j.T)[perm])


@needs_torchjd
@settings(max_examples=60, deadline=None)
@given(j=structured_jacobians(max_k=9), f=st.integers(0, 3), n_selected=st.integers(1, 3))
def test_krum_matches_torchjd_hypothesis(j: Tensor, f: int, n_selected: int) -> None:
    import torchjd.aggregation as ta

    g = j @ j.T
    if g.shape[0] < max(f + 3, n_selected):
        return
    ours = A.Krum(n_byzantine=f, n_selected=n_selected).weights(g)
    assert torch.equal(ours, ta.KrumWeighting(f, n_selected)(g))


@needs_torchjd
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", HARD_IDS)
@pytest.mark.parametrize("trim", [0, 1, 3])
def test_trimmed_mean_matches_torchjd(name: str, trim: int, dtype: torch.dtype) -> None:
    import torchjd.aggregation as ta

    j = HARD[name].to(dtype)
    ours = A.TrimmedMean(trim_number=trim)
    if j.shape[0] < 2 * trim + 1:
        with pytest.raises(ValueError, match="K >="):
            ours.aggregate(j)
        return
    assert torch.equal(ours.aggregate(j), ta.TrimmedMean(trim)(j))


@pytest.mark.parametrize("name", HARD_IDS)
def test_trimmed_mean_properties(name: str) -> None:
    j = HARD[name]
    k = j.shape[0]
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1))
    agg = A.TrimmedMean()
    assert torch.equal(agg.aggregate(j[perm]), agg.aggregate(j))  # permutation invariance
    if k < 10:  # the default trims floor(K / 10): nothing below K = 10, i.e. the mean
        torch.testing.assert_close(agg.aggregate(j), j.mean(dim=0), rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(agg.aggregate(j), A.TrimmedMean(trim_number=k // 10).aggregate(j))
    if k < 2:
        return
    # Each coordinate stays within the kept order statistics (robust to one huge row).
    out = A.TrimmedMean(trim_number=1).aggregate(torch.cat([j, 1e9 * torch.ones(1, j.shape[1])]))
    assert bool((out <= j.max(dim=0).values + 1e-12).all())
