"""Per-label Jacobians and Gramians against a loop of autograd calls."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from labelgrad.aggregation.per_label_jacobian import blocked_gramian, exact_jacobian, gramian_of


def _losses(k: int = 6) -> tuple[Tensor, list[Tensor]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, k)).double()
    out = (net(torch.randn(7, 4, dtype=torch.float64)) ** 2).mean(0)
    return out, list(net.parameters())


def _loop(losses: Tensor, params: list[Tensor]) -> list[Tensor]:
    rows = [torch.autograd.grad(losses[i], params, retain_graph=True) for i in range(len(losses))]
    return [torch.stack([r[j] for r in rows]) for j in range(len(params))]


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 6, 100])
@pytest.mark.parametrize("batched", [None, True, False])
def test_exact_jacobian_any_chunking_equals_the_loop(
    chunk_size: int | None, batched: bool | None
) -> None:
    losses, params = _losses()
    got = exact_jacobian(losses, params, chunk_size=chunk_size, batched=batched)
    for g, r in zip(got, _loop(losses, params), strict=True):
        assert g is not None
        torch.testing.assert_close(g, r)


def test_unreached_input_is_none() -> None:
    losses, params = _losses()
    other = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    got = exact_jacobian(losses, [*params, other], chunk_size=2)
    assert got[-1] is None
    _g, reached = blocked_gramian(
        losses, [*params, other], anchor_rows=2, chunk_size=1, batched=None
    )
    assert reached == [True] * len(params) + [False]


@pytest.mark.parametrize(("anchor", "chunk"), [(1, 1), (2, 3), (4, 1), (6, 6), (50, 2)])
def test_blocked_gramian_equals_j_jt(anchor: int, chunk: int) -> None:
    losses, params = _losses()
    ref = gramian_of(_loop(losses, params))
    g, _ = blocked_gramian(losses, params, anchor_rows=anchor, chunk_size=chunk, batched=None)
    torch.testing.assert_close(g, ref)
    assert torch.equal(g, g.T)


def test_gramian_of_half_precision_is_float32() -> None:
    j = torch.full((2, 3), 300.0, dtype=torch.float16)  # 3 * 300^2 overflows float16
    g = gramian_of([j])
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, torch.full((2, 2), 270000.0))
