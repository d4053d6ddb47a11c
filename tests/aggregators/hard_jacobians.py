"""Hard inputs shared by the per-aggregator tests, and state round-trip checks.

Random and adversarial Jacobians (condition numbers up to 1e8, rank-deficient, duplicated,
opposite and zero rows, 0 in the convex hull, K = 1..64), drifting sequences of them for the
stateful aggregators, and checks that ``state_dict`` round-trips and ``reset`` restarts.
Tolerances are stated per test, relative to the largest reference entry (:func:`relative_error`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

import labelgrad as lg

A = lg.aggregators

__all__ = [
    "DTYPES",
    "DTYPE_IDS",
    "HARD",
    "HARD_IDS",
    "STATEFUL_IDS",
    "Feed",
    "aggregate",
    "assert_reset_restarts",
    "assert_state_round_trip",
    "cross_matrix",
    "hard_jacobians",
    "ill_conditioned",
    "random_jacobian",
    "relative_error",
    "sequence",
    "structured_jacobians",
    "weigh",
]


DTYPES = [torch.float64, torch.float32]


DTYPE_IDS = ["float64", "float32"]


def random_jacobian(k: int, p: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = 1 + 3 * torch.rand(k, 1, generator=g, dtype=torch.float64)
    return (torch.randn(k, p, generator=g, dtype=torch.float64) * scale).to(dtype)


def ill_conditioned(k: int, p: int, cond: float, seed: int) -> Tensor:
    """Rows spanning sqrt(cond) in singular values: the Gramian's condition number is ``cond``."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(p, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -0.5 * torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64)
    out: Tensor = u @ torch.diag(s) @ v.T
    return out


def hard_jacobians() -> dict[str, Tensor]:
    """Named float64 Jacobians, K from 1 to 64."""
    out = {f"random-K{k}": random_jacobian(k, 2 * k + 3, seed=k) for k in (1, 2, 3, 7, 16, 64)}
    out["ill-cond-1e8"] = ill_conditioned(8, 12, 1e8, seed=1)
    out["ill-cond-1e8-K24"] = ill_conditioned(24, 30, 1e8, seed=2)
    out["rank-deficient"] = random_jacobian(12, 3, seed=3) @ random_jacobian(3, 20, seed=4)
    base = random_jacobian(6, 15, seed=5)
    out["duplicated"] = torch.cat([base, base[:3]])
    out["opposite"] = torch.cat([base, -base[:2]])
    zero = random_jacobian(8, 15, seed=6)
    zero[[1, 4]] = 0
    out["zero-rows"] = zero
    g = random_jacobian(1, 10, seed=7)
    out["stationary"] = torch.cat([g, -g, 0.5 * g, random_jacobian(2, 10, seed=8)])
    out["all-zero"] = torch.zeros(5, 7, dtype=torch.float64)
    return out


HARD = hard_jacobians()


HARD_IDS = list(HARD)


def relative_error(ours: Tensor, ref: Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    scale = ref.abs().max().clamp(min=1e-30)
    return float((ours - ref).abs().max() / scale) if ref.numel() else 0.0


def cross_matrix(j: Tensor, seed: int) -> Tensor:
    """``J_1 J_2^T`` for two noisy copies of ``j`` (not symmetric): MoDo's and SDMGrad's input."""
    g = torch.Generator().manual_seed(seed)
    noise = 0.3 * j.abs().max().clamp(min=1.0)
    j1 = j + noise * torch.randn(j.shape, generator=g, dtype=j.dtype)
    j2 = j + noise * torch.randn(j.shape, generator=g, dtype=j.dtype)
    return j1 @ j2.T


def sequence(j: Tensor, steps: int, seed: int) -> list[Tensor]:
    """``steps`` Jacobians near ``j`` (a training run's drift), deterministic."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.2 * j.abs().max().clamp(min=1.0)
    return [j + scale * torch.randn(j.shape, generator=g, dtype=j.dtype) for _ in range(steps)]


Feed = Callable[[Any, Tensor], Tensor]


def assert_state_round_trip(make: Callable[[], Any], feed: Feed, inputs: list[Tensor]) -> None:
    """Run half the inputs, save, load into a fresh module, run the rest on both: bitwise equal."""
    first = make()
    half = len(inputs) // 2
    for x in inputs[:half]:
        feed(first, x)
    state = first.state_dict()
    assert len(state) > 0
    second = make()
    second.load_state_dict(state)
    for key, value in state.items():
        loaded = second.state_dict()[key]
        # Tensors bitwise; a wrapper's extra state (the wrapped type's name) by equality.
        assert torch.equal(loaded, value) if isinstance(value, Tensor) else loaded == value, key
    for x in inputs[half:]:
        assert torch.equal(feed(first, x), feed(second, x))


def assert_reset_restarts(make: Callable[[], Any], feed: Feed, inputs: list[Tensor]) -> None:
    agg = make()
    for x in inputs[:2]:
        feed(agg, x)
    agg.reset()
    fresh = make()
    for x in inputs:
        assert torch.equal(feed(agg, x), feed(fresh, x))


def weigh(agg: A.GramianWeighting, g: Tensor) -> Tensor:
    return agg.weights(g)


def aggregate(agg: A.JacobianAggregator, j: Tensor) -> Tensor:
    return agg.aggregate(j)


STATEFUL_IDS = ["random-K1", "random-K3", "random-K16", "random-K64", "ill-cond-1e8"]
STATEFUL_IDS += ["rank-deficient", "duplicated", "opposite", "zero-rows", "stationary", "all-zero"]


@st.composite
def structured_jacobians(draw: st.DrawFn, max_k: int = 6) -> Tensor:
    """Small Jacobians with rows of very different scales, some duplicated, negated or zero."""
    k = draw(st.integers(2, max_k))
    p = draw(st.integers(1, 8))
    j = random_jacobian(k, p, seed=draw(st.integers(0, 10_000)))
    exponents = draw(st.lists(st.integers(-4, 4), min_size=k, max_size=k))
    j = j * torch.tensor([10.0**e for e in exponents], dtype=j.dtype).unsqueeze(1)
    for i in range(1, k):
        kind = draw(st.sampled_from(["keep", "keep", "dup", "neg", "zero"]))
        src = draw(st.integers(0, i - 1))
        if kind == "dup":
            j[i] = j[src]
        elif kind == "neg":
            j[i] = -j[src]
        elif kind == "zero":
            j[i] = 0
    return j
