"""lg.effective_number_weights and lg.class_priors against their formulas, written out directly,
and on the hostile inputs of HOSTILE.md (dtypes, empty and huge counts, bad values)."""

from __future__ import annotations

import math

import pytest
import torch

import labelgrad as lg


def _cui(counts: list[float], beta: float) -> list[float]:
    """Cui et al. (2019), in plain Python floats: w_c = (1 - beta) / (1 - beta^n_c), mean 1 over
    the classes with samples, 0 for the others."""
    raw = [(1 - beta) / (1 - beta**n) if n > 0 else 0.0 for n in counts]
    present = sum(1 for n in counts if n > 0)
    total = sum(raw)
    return [w * present / total for w in raw]


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999, 0.9999])
@pytest.mark.parametrize("counts", [[500, 50, 5, 1], [3, 0, 7], [1], [2.5, 0.5, 10.0]])
def test_effective_number_weights_equal_the_formula(counts: list[float], beta: float) -> None:
    got = lg.effective_number_weights(torch.tensor(counts, dtype=torch.float64), beta)
    assert got.dtype == torch.float64
    want = _cui(counts, beta) if beta > 0 else [1.0 if n > 0 else 0.0 for n in counts]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)


def test_effective_number_weights_limits() -> None:
    counts = torch.tensor([1000, 100, 10, 1])
    # beta -> 1: inverse frequency (normalised to mean 1).
    inv = 1 / counts.double()
    torch.testing.assert_close(
        lg.effective_number_weights(counts.double(), 1 - 1e-12),
        inv * 4 / inv.sum(),
        rtol=1e-6,
        atol=0,
    )
    # beta = 0: equal weights.
    assert lg.effective_number_weights(counts, 0.0).tolist() == [1.0] * 4


def test_effective_number_weights_float32_loses_no_digits_at_count_one() -> None:
    # 1 - 0.9999 ** 1 in float32 arithmetic would be about 1.0001e-4 (a 0.01 % error), and at
    # counts of 1 next to counts of 1e6 the ratio must still be exact to float32 precision.
    counts = torch.tensor([1e6, 1.0], dtype=torch.float32)
    got = lg.effective_number_weights(counts, 0.9999)
    assert got.dtype == torch.float32
    want = _cui([1e6, 1.0], 0.9999)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=0)


def test_dtypes_and_inputs() -> None:
    assert lg.effective_number_weights([3, 1]).dtype == torch.get_default_dtype()
    assert lg.effective_number_weights(torch.tensor([3, 1], dtype=torch.int32)).dtype == (
        torch.get_default_dtype()
    )
    assert lg.effective_number_weights(torch.tensor([3.0, 1.0], dtype=torch.float16)).dtype == (
        torch.float16
    )
    assert lg.class_priors(torch.tensor([3.0, 1.0], dtype=torch.float64)).dtype == torch.float64
    assert lg.class_priors([3, 1]).dtype == torch.get_default_dtype()
    # The caller's tensor is never changed (min_count clamps a copy).
    counts = torch.tensor([4.0, 0.0])
    lg.class_priors(counts, min_count=1)
    lg.effective_number_weights(counts)
    assert counts.tolist() == [4.0, 0.0]


def test_huge_counts() -> None:
    # beta^n underflows to 0 for huge n: every class then weighs (1 - beta), equal weights.
    w = lg.effective_number_weights(torch.tensor([1e15, 1e12, 1e9], dtype=torch.float64), 0.999)
    torch.testing.assert_close(w, torch.ones(3, dtype=torch.float64), rtol=1e-12, atol=0)
    p = lg.class_priors(torch.tensor([2.0**60, 2.0**60, 2.0**61], dtype=torch.float64))
    assert p.tolist() == [0.25, 0.25, 0.5]
    assert math.isclose(float(lg.class_priors(torch.full((10_000,), 1e30)).sum()), 1, rel_tol=1e-5)


def test_class_priors_equal_the_formula() -> None:
    counts = [30.0, 0.0, 9.0, 1.0]
    p = lg.class_priors(torch.tensor(counts, dtype=torch.float64))
    assert p.tolist() == [n / 40 for n in counts]
    p1 = lg.class_priors(torch.tensor(counts, dtype=torch.float64), min_count=1)
    assert p1.tolist() == [n / 41 for n in (30.0, 1.0, 9.0, 1.0)]
    # All-zero counts are fine once min_count makes them positive: a uniform prior.
    assert lg.class_priors([0, 0], min_count=1).tolist() == [0.5, 0.5]
    # The priors feed logit_adjust: its gradient is that of CE on z + log prior.
    z = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(lg.logit_adjust(p1)(z, y), y).backward()
    ref = z.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(ref + p1.log(), y).backward()
    torch.testing.assert_close(z.grad, ref.grad)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([3, -1], r"counts\[1\] = -1"),
        ([3.0, math.nan], r"counts\[1\] = nan"),
        ([math.inf, 1.0], r"counts\[0\] = inf"),
        ([0, 0], "at least one positive"),
        ([], "non-empty 1-D"),
        ([[1, 2]], "non-empty 1-D"),
        (torch.tensor([True, False]), "real numbers"),
    ],
)
def test_bad_counts_are_refused(counts: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lg.effective_number_weights(counts)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        lg.class_priors(counts)  # type: ignore[arg-type]


@pytest.mark.parametrize("beta", [1.0, -0.1, math.nan, "0.9", 2])
def test_bad_beta_is_refused(beta: object) -> None:
    with pytest.raises(ValueError, match="beta must be"):
        lg.effective_number_weights([3, 1], beta)  # type: ignore[arg-type]


@pytest.mark.parametrize("min_count", [-1.0, math.inf, math.nan, "1"])
def test_bad_min_count_is_refused(min_count: object) -> None:
    with pytest.raises(ValueError, match="min_count must be"):
        lg.class_priors([3, 1], min_count=min_count)  # type: ignore[arg-type]
