"""Adversarial Jacobians for the aggregator property tests (reusable: import, do not copy).

Each generator returns a (K, P) Jacobian ``J``; the aggregators see ``G = J J^T``. Jacobians
(rather than Gramians) are generated so that the properties can be checked on ``J`` itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["CASES", "NON_STRONG", "STATIONARY", "case_ids", "jacobian"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_rows(k: int, p: int, seed: int) -> Tensor:
    """Gaussian rows with norms spread over one order of magnitude (the typical case)."""
    g = _gen(seed)
    return torch.randn(k, p, generator=g, dtype=torch.float64) * (
        1 + 9 * torch.rand(k, 1, generator=g, dtype=torch.float64)
    )


def ill_conditioned(k: int, p: int, seed: int, cond: float = 1e8) -> Tensor:
    """Singular values from 1 down to ``sqrt(cond)^-1``: ``cond(G) = cond``."""
    g = _gen(seed)
    u, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(p, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -0.5 * torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64)
    return (u * s) @ v.T


def rank_deficient(k: int, p: int, seed: int, rank: int = 3) -> Tensor:
    g = _gen(seed)
    return torch.randn(k, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, p, generator=g, dtype=torch.float64
    )


def duplicated(k: int, p: int, seed: int) -> Tensor:
    """Every row twice (K even)."""
    base = random_rows(k // 2, p, seed)
    return torch.cat([base, base])


def opposite(k: int, p: int, seed: int) -> Tensor:
    """Rows ``a, -a`` and ``b, -2 b``, then random rows."""
    base = random_rows(k, p, seed)
    base[1] = -base[0]
    base[3] = -2 * base[2]
    return base


def zero_rows(k: int, p: int, seed: int) -> Tensor:
    base = random_rows(k, p, seed)
    base[::3] = 0
    return base


def stationary(k: int, p: int, seed: int) -> Tensor:
    """0 strictly inside the convex hull: the last row is minus a positive mix of the others."""
    base = random_rows(k - 1, p, seed)
    mix = 0.5 + torch.rand(k - 1, 1, generator=_gen(seed + 1), dtype=torch.float64)
    return torch.cat([base, -(mix * base).sum(0, keepdim=True) / 2])


def non_strong(k: int, p: int, seed: int) -> Tensor:
    """0 is in the hull only with some zero weights (``a, -a`` and rows with ``x_2 > 0``).

    Any positive combination has a positive second coordinate: not strongly stationary.
    """
    g = _gen(seed)
    rows = torch.randn(k, p, generator=g, dtype=torch.float64) * 0.3
    rows[:, 1] = 1 + torch.rand(k, generator=g, dtype=torch.float64)
    rows[0] = 0
    rows[0, 0] = 1.0
    rows[1] = -rows[0]
    return rows


Generator = Callable[[int, int, int], Tensor]

#: (name, generator, K, P): the adversarial suite. K from 1 to 256.
CASES: list[tuple[str, Generator, int, int]] = [
    ("k1", random_rows, 1, 5),
    ("k2_opposite", opposite, 4, 6),
    ("typical", random_rows, 7, 20),
    ("ill_conditioned_1e8", ill_conditioned, 8, 12),
    ("rank_deficient", rank_deficient, 10, 30),
    ("duplicated", duplicated, 8, 15),
    ("zero_rows", zero_rows, 9, 15),
    ("stationary", stationary, 6, 10),
    ("wide_k64", random_rows, 64, 32),
    ("k256", random_rows, 256, 64),
]
STATIONARY = {"stationary", "k2_opposite"}
NON_STRONG: list[tuple[str, Generator, int, int]] = [
    ("non_strong_k3", non_strong, 3, 4),
    ("non_strong_k9", non_strong, 9, 12),
]


def jacobian(case: tuple[str, Generator, int, int], dtype: torch.dtype, seed: int = 0) -> Tensor:
    """The case's Jacobian in ``dtype``."""
    _, make, k, p = case
    return make(k, p, seed).to(dtype)


def case_ids(cases: list[tuple[str, Generator, int, int]]) -> list[str]:
    return [c[0] for c in cases]
