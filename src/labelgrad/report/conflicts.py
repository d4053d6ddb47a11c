"""The Gramian of per-label gradients on shared parameters, for ``lg.conflicts`` heatmaps."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from labelgrad.aggregation.per_label_jacobian import exact_jacobian, gramian_of

__all__ = ["label_gramian"]


def label_gramian(losses: Tensor, params: Iterable[nn.Parameter]) -> Tensor:
    """The Gramian G = J Jᵀ of the (K,) ``losses``' gradients on ``params``, shape (K, K).

    The exact engine of :func:`labelgrad.aggregate_backward` computes it: batched
    vector-Jacobian products inside :func:`labelgrad.no_state_update`, so stateful policies do
    not count them. The graph is kept.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> label_gramian(torch.stack([w[0], -w[0] + w[1]]), [w]).tolist()
        [[1.0, -1.0], [-1.0, 2.0]]
    """
    ps = [p for p in params if p.requires_grad]
    k = losses.numel()
    jacobians = [j for j in exact_jacobian(losses.reshape(k), ps) if j is not None]
    if not jacobians:
        return torch.zeros(k, k, dtype=losses.dtype, device=losses.device)
    return gramian_of(jacobians).to(losses.dtype)
