"""The batched LCP solver's code paths agree: one block, chunks of rows, fixed shapes.

Reference: the certificate (relative natural residual of the KKT conditions, float64) and the
single-block CPU answer; tolerances 1e-9 residual and 1e-10 absolute agreement.
"""

from __future__ import annotations

import pytest
import torch

from labelgrad.aggregators._qp import lcp_residual, normalize_gramian, regularize_gramian, solve_lcp


def _problem(k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(k, 3 + k // 2, generator=g, dtype=torch.float64)
    j *= 10 ** (2 * torch.rand(k, 1, generator=g, dtype=torch.float64) - 1)
    m = regularize_gramian(normalize_gramian(j @ j.T, 1e-4), 1e-4)
    return m, (torch.eye(k, dtype=torch.float64) / k) @ m


@pytest.mark.parametrize(("k", "seed"), [(1, 0), (5, 1), (17, 2), (40, 3)])
def test_chunked_and_fixed_shape_paths_match_the_single_block(k: int, seed: int) -> None:
    m, q = _problem(k, seed)
    x, active = solve_lcp(m, q)
    assert float(lcp_residual(m, q, x.clamp(min=0)).max()) <= 1e-9
    assert bool((active == (x <= 0)).all())
    for options in (
        {"budget": 1},  # one row per chunk, rows sorted by free-set size
        {"budget": 3 * k},  # several rows per chunk
        {"host_shapes": False},
        {"host_shapes": False, "budget": 1},
    ):
        x_path, active_path = solve_lcp(m, q, **options)
        torch.testing.assert_close(x_path, x, rtol=0, atol=1e-10, msg=str(options))
        assert bool((active_path == active).all()), options
