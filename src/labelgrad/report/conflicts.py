"""The label conflict matrix: cosine similarity of per-label gradients on shared parameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from labelgrad.policies.base import no_state_update

__all__ = ["conflict_matrix", "label_gramian"]


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


def conflict_matrix(gramian: Tensor) -> Tensor:
    """Cosine similarity of label gradients from their Gramian: G_ij / sqrt(G_ii G_jj).

    Negative entries are conflicting label pairs. Labels with a zero gradient get 0 off the
    diagonal. Uses ``labelgrad.conflicts`` (the aggregation level's helper) where it exists.

    Example:
        >>> conflict_matrix(torch.tensor([[1.0, -1.0], [-1.0, 4.0]])).tolist()
        [[1.0, -0.5], [-0.5, 1.0]]
    """
    import labelgrad

    helper = getattr(labelgrad, "conflicts", None)
    if helper is not None:
        out: Tensor = helper(gramian)
        return out
    norms = gramian.diagonal().clamp(min=0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gramian / denom.clamp(min=1e-30), 0.0)
