"""The Gramian of per-label gradients on shared parameters, for ``lg.conflicts`` heatmaps."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from labelgrad.policies.base import no_state_update

__all__ = ["label_gramian"]


def label_gramian(losses: Tensor, params: Iterable[nn.Parameter]) -> Tensor:
    """The Gramian G = J Jᵀ of the (K,) ``losses``' gradients on ``params``, shape (K, K).

    All K vector-Jacobian products run in one batched backward (``is_grads_batched``), inside
    :func:`labelgrad.no_state_update` so stateful policies do not count them. The graph is kept.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> label_gramian(torch.stack([w[0], -w[0] + w[1]]), [w]).tolist()
        [[1.0, -1.0], [-1.0, 2.0]]
    """
    ps = [p for p in params if p.requires_grad]
    k = losses.numel()
    eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
    with no_state_update():
        grads = torch.autograd.grad(
            losses.reshape(k),
            ps,
            grad_outputs=eye,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
    jac = torch.cat(
        [
            (g if g is not None else torch.zeros(k, *p.shape, device=losses.device)).reshape(k, -1)
            for g, p in zip(grads, ps)
        ],
        dim=1,
    )
    return jac @ jac.T
