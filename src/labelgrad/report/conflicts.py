"""The Gramian of per-label gradients on shared parameters, for ``lg.conflicts`` heatmaps."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from labelgrad.aggregation.graph_checks import check_reaches
from labelgrad.aggregation.per_label_jacobian import exact_jacobian, gramian_of

__all__ = ["label_gramian"]


def label_gramian(losses: Tensor, params: Iterable[nn.Parameter]) -> Tensor:
    """The Gramian G = J Jᵀ of the (K,) ``losses``' gradients on ``params``, shape (K, K).

    The exact engine of :func:`labelgrad.aggregate_backward` computes it: batched
    vector-Jacobian products inside :func:`labelgrad.no_state_update`, so stateful policies do
    not count them. The graph is kept. Each parameter counts once.

    Raises:
        ValueError: ``params`` is empty, or ``losses`` has no graph or reaches none of them.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> label_gramian(torch.stack([w[0], -w[0] + w[1]]), [w]).tolist()
        [[1.0, -1.0], [-1.0, 2.0]]
    """
    # Each parameter once (a repeat would count its block of J twice), as aggregate_backward.
    ps = list({id(p): p for p in params if p.requires_grad}.values())
    if not ps:
        raise ValueError("params is empty (or none requires grad): pass the shared parameters")
    check_reaches(losses, ps, "losses")  # no graph / detached: an error, not a zero Gramian
    k = losses.numel()
    jacobians = [j for j in exact_jacobian(losses.reshape(k), ps) if j is not None]
    if not jacobians:
        return torch.zeros(k, k, dtype=losses.dtype, device=losses.device)
    return gramian_of(jacobians).to(losses.dtype)
