"""Shared set-up of the aggregation tests: reference weightings, a small trunk and head, a batch,
and the guards of the tests that compare with TorchJD 0.18 (an optional dependency).

The weightings are written here independently of labelgrad's aggregators, so that the engine
tests compare against plain formulas.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor, nn

__all__ = [
    "HAS_CVXPY",
    "HAS_QUADPROG",
    "HAS_SCIPY",
    "HAS_TORCHJD",
    "InvNorm",
    "Mean",
    "Sum",
    "batch",
    "model",
    "needs_cvxpy",
    "needs_quadprog",
    "needs_scipy",
    "needs_torchjd",
    "one_thread",
]


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


HAS_TORCHJD = _installed("torchjd")
HAS_QUADPROG = HAS_TORCHJD and _installed("quadprog", "qpsolvers")
HAS_CVXPY = HAS_TORCHJD and _installed("cvxpy", "clarabel", "ecos")
HAS_SCIPY = HAS_TORCHJD and _installed("scipy")
needs_torchjd = pytest.mark.skipif(not HAS_TORCHJD, reason="torchjd 0.18 is not installed")
needs_quadprog = pytest.mark.skipif(
    not HAS_QUADPROG, reason="torchjd[quadprog_projector] (quadprog, qpsolvers) not installed"
)
needs_cvxpy = pytest.mark.skipif(
    not HAS_CVXPY, reason="torchjd[cagrad,nash_mtl] (cvxpy, clarabel, ecos) not installed"
)
needs_scipy = pytest.mark.skipif(not HAS_SCIPY, reason="torchjd[fairgrad] (scipy) not installed")


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread: on a shared 2-core machine its pool thrashes (small solves 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Mean:
    """TorchJD's Mean: w = 1/K, i.e. the gradient of losses.mean()."""

    def weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        return torch.full((k,), 1.0 / k, dtype=gramian.dtype, device=gramian.device)


class Sum:
    """w = 1: the gradient of losses.sum(), the ordinary mean loss of the batch."""

    def weights(self, gramian: Tensor, /) -> Tensor:
        return torch.ones(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)


class InvNorm:
    """A weighting that depends on G: w_k = 1 / sqrt(G_kk) (equalizes the label gradients)."""

    def weights(self, gramian: Tensor, /) -> Tensor:
        return gramian.diagonal().clamp_min(1e-12).rsqrt()


def model(c: int = 5, d: int = 8) -> tuple[nn.Module, nn.Linear]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, d), nn.Tanh(), nn.Linear(d, d), nn.Tanh()).double()
    head = nn.Linear(d, c).double()
    return trunk, head


def batch(n: int = 12, c: int = 5) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 2, (n, c), generator=g
    )
