"""check_gramian: the fused one-read test accepts exactly what the step-by-step checks accept."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import _check_gram_form, check_gramian


def _reference_accepts(gramian: Tensor, psd: bool) -> bool:
    """The checks one by one, as they were before they were fused (the reference)."""
    if not bool(gramian.isfinite().all()):
        return False
    if psd:
        try:
            _check_gram_form(gramian)
        except ValueError:
            return False
    return True


def _accepts(gramian: Tensor, psd: bool) -> bool:
    try:
        check_gramian(gramian, psd=psd)
    except ValueError:
        return False
    return True


def _cases() -> list[tuple[str, Tensor]]:
    gen = torch.Generator().manual_seed(0)
    j = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    g = j @ j.T
    tol = torch.finfo(torch.bfloat16).eps ** 0.5
    limit = tol * float(g.diagonal().max())
    cases = [("psd", g), ("zero", torch.zeros(4, 4)), ("one", torch.ones(1, 1))]
    cases += [("rank one", torch.ones(5, 5)), ("huge", g * 1e300), ("tiny", g * 1e-300)]
    for scale, name in ((0.5, "inside"), (2.0, "outside")):
        asym = g.clone()
        asym[0, 1] += scale * limit
        cases.append((f"asymmetric {name} tolerance", asym))
        neg = g.clone()
        neg[2, 2] = -scale * limit
        neg[2, :2] = neg[:2, 2] = 0.0
        neg[2, 3:] = neg[3:, 2] = 0.0
        cases.append((f"negative diagonal {name} tolerance", neg))
        big = g.clone()
        edge = math.sqrt(float(g[0, 0] * g[1, 1])) * (1 + tol) + scale * limit
        big[0, 1] = big[1, 0] = edge
        cases.append((f"off-diagonal {name} tolerance", big))
    for where in ((0, 0), (0, 1)):
        for value in (math.inf, -math.inf, math.nan):
            bad = g.clone()
            bad[where] = value
            if where != (0, 0):
                bad[where[::-1]] = value
            cases.append((f"{value} at {where}", bad))
    cases.append(("inf everywhere", torch.full((3, 3), math.inf)))
    return [(n, t.to(dtype)) for n, t in cases for dtype in (torch.float64, torch.float32)]


CASES = _cases()


@pytest.mark.parametrize("psd", [True, False])
@pytest.mark.parametrize(("name", "gramian"), CASES, ids=[f"{n}-{t.dtype}" for n, t in CASES])
def test_fused_check_accepts_exactly_what_the_checks_one_by_one_accept(
    name: str, gramian: Tensor, psd: bool
) -> None:
    assert _accepts(gramian, psd) == _reference_accepts(gramian, psd), name


def test_the_cases_reach_both_answers() -> None:
    # Otherwise the comparison above could not fail.
    answers = {_reference_accepts(g, True) for _, g in CASES}
    assert answers == {True, False}


def test_a_refused_gramian_still_names_its_fault() -> None:
    g = torch.eye(3, dtype=torch.float64)
    g[0, 1] = 0.5
    with pytest.raises(ValueError, match="not symmetric"):
        check_gramian(g)
    g = torch.eye(3)
    g[1, 1] = -1.0
    with pytest.raises(ValueError, match=r"negative diagonal entry G\[1, 1\]"):
        check_gramian(g)
    g[1, 1] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        check_gramian(g)
