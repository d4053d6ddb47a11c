"""The cosine matrix of the label-group gradients (``lg.conflicts``), for diagnostics."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import check_gramian

__all__ = ["conflicts"]


def conflicts(gramian: Tensor, /) -> Tensor:
    """Cosine similarities ``cos(g_i, g_j) = G_ij / (|g_i| |g_j|)`` of the K gradients.

    Negative entries are conflicts: following ``g_j`` increases loss ``i``. Pairs that involve a
    zero gradient get 0; the diagonal is 1 where the gradient is non-zero. Entries are clamped to
    [-1, 1] (round-off). No host sync.

    Args:
        gramian: the (K, K) Gramian ``G = J J^T``.

    Returns:
        The (K, K) cosine matrix, on the Gramian's device and dtype.

    Example:
        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
        >>> conflicts(J @ J.T)
        tensor([[ 1., -1.,  0.],
                [-1.,  1.,  0.],
                [ 0.,  0.,  0.]])
    """
    gramian = check_gramian(gramian)
    norms = gramian.diagonal().clamp(min=0).sqrt()
    outer = norms.unsqueeze(-1) * norms.unsqueeze(-2)
    nonzero = outer > 0
    cos = torch.where(nonzero, gramian / torch.where(nonzero, outer, 1.0), 0.0).clamp(-1.0, 1.0)
    eye = torch.eye(gramian.shape[0], dtype=torch.bool, device=gramian.device)
    return torch.where(eye & nonzero, 1.0, cos).to(gramian.dtype)
