"""PCGrad: project each gradient away from the others it conflicts with, in random order."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import GramianWeighting

__all__ = ["PCGrad", "pcgrad_weights", "random_orders"]


def random_orders(k: int, *, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """K independent random permutations of ``range(k)``, one per row, in one call (K, K)."""
    return torch.rand(k, k, generator=generator, device=device).argsort(dim=-1)


def pcgrad_weights(gramian: Tensor, orders: Tensor) -> Tensor:
    r"""PCGrad's weights for given visiting orders, computed on the Gramian for all rows at once.

    Row ``i`` starts as ``g_i^PC = g_i`` (coefficients ``c_i = e_i``); for each ``j`` in
    ``orders[i]`` (``j = i`` skipped), if ``g_i^PC · g_j < 0`` then
    ``g_i^PC -= (g_i^PC · g_j / |g_j|^2) g_j``. In Gramian terms ``g_i^PC · g_j = c_i^T G_{:, j}``
    and the projection adds ``-(c_i^T G_{:, j}) / G_jj`` to ``c_ij``. The K rows are independent,
    so each of the K positions of the orders is one vectorized step over all rows; the weights are
    ``sum_i c_i`` (TorchJD's convention: the update is the *sum* of the projected gradients).
    Zero gradients (``G_jj = 0``) are never projected onto.

    Args:
        gramian: (K, K) Gramian.
        orders: (K, K) integer tensor; row ``i`` is a permutation of ``range(K)``.

    Returns:
        (K,) weights.

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, -0.5], [-0.5, 1.0]])
        >>> pcgrad_weights(G, torch.tensor([[0, 1], [1, 0]]))
        tensor([1.5000, 1.5000])
    """
    k = gramian.shape[0]
    rows = torch.arange(k, device=gramian.device)
    coefs = torch.eye(k, dtype=gramian.dtype, device=gramian.device)
    diag = gramian.diagonal()
    # Per (row, position): -1/|g_j|^2 where the projection may happen (j != i, g_j != 0), else 0.
    visited_diag = diag[orders]
    allowed = (orders != rows.unsqueeze(1)) & (visited_diag > 0)
    neg_inv = torch.where(allowed, -1 / torch.where(allowed, visited_diag, 1.0), 0.0)
    flat = (rows.unsqueeze(1) * k + orders).t().contiguous()  # (position, row) into coefs
    orders_t = orders.t().contiguous()
    neg_inv_t = neg_inv.t().contiguous()
    flat_coefs = coefs.view(-1)
    for t in range(k):
        inner = torch.linalg.vecdot(coefs, gramian[orders_t[t]])  # g_i^PC · g_j, every row i
        flat_coefs.index_add_(0, flat[t], inner.clamp(max=0) * neg_inv_t[t])
    return coefs.sum(dim=0)


class PCGrad(GramianWeighting):
    r"""PCGrad (Yu et al., `Gradient Surgery for Multi-Task Learning
    <https://arxiv.org/abs/2001.06782>`_, Algorithm 1), as a weighting of the Gramian.

    Each gradient is projected onto the normal plane of every other gradient it conflicts with,
    visiting the others in an order drawn at random for every row and every call; the update is
    the sum of the projected gradients (TorchJD 0.18's scale: ``w = sum_i c_i``, see
    :func:`pcgrad_weights`). Exact (no iteration tolerance); K vectorized steps of O(K^2).

    Args:
        generator: the source of the random orders (on the Gramian's device); global if None.

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, -0.5], [-0.5, 1.0]])
        >>> PCGrad().weights(G)  # with K = 2 the order does not matter
        tensor([1.5000, 1.5000])
    """

    def __init__(self, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator

    def _weights(self, gramian: Tensor, /) -> Tensor:
        orders = random_orders(gramian.shape[0], generator=self.generator, device=gramian.device)
        return pcgrad_weights(gramian, orders)
