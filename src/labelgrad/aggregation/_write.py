"""Writing the gradients an engine decided: added to ``.grad``, as ``Tensor.backward`` does."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from labelgrad.aggregation import _graph
from labelgrad.policies import no_state_update

__all__ = ["add_grad", "others", "plain_backward_with_updates", "weighted_backward"]


def add_grad(p: Tensor, g: Tensor, fresh: bool = False) -> None:
    """``p.grad += g`` (set where there is none yet), in ``p``'s dtype.

    ``fresh``: ``g`` is a new tensor nobody else holds, so it becomes ``.grad`` without a copy.
    """
    if p.grad is not None:
        p.grad.add_(g.to(p.dtype))
    elif fresh and g.dtype == p.dtype and g.is_contiguous():
        p.grad = g.detach()
    else:
        p.grad = g.detach().to(p.dtype, copy=True)


def others(losses: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """The leaves the losses reach that are not among ``params`` (they get the plain gradient)."""
    ids = {id(p) for p in params}
    return [leaf for leaf in _graph.leaves_reached(losses) if id(leaf) not in ids]


def plain_backward_with_updates(
    losses: Tensor, params: Sequence[Tensor], updates: Sequence[Tensor]
) -> None:
    """Plain gradient of ``losses.sum()`` for the other leaves; ``updates`` into ``params``."""
    rest = others(losses, params)
    if rest:
        torch.autograd.backward(losses.sum(), inputs=rest)
        with torch.no_grad():
            for p, u in zip(params, updates):
                add_grad(p, u, fresh=True)
        return
    # No other parameter: one backward with the shared gradients replaced, so that stateful
    # policies at the logits still see this batch once.
    handles = [p.register_hook(lambda _g, u=u: u.to(_g.dtype)) for p, u in zip(params, updates)]
    try:
        torch.autograd.backward(losses.sum(), inputs=list(params))
    finally:
        for h in handles:
            h.remove()


def weighted_backward(losses: Tensor, params: Sequence[Tensor], w: Tensor) -> None:
    """Shared parameters: gradient of sum_k w_k L_k; all others: gradient of losses.sum()."""
    rest = others(losses, params)
    grad = w.to(losses.dtype).detach()
    if rest:
        with no_state_update():
            torch.autograd.backward(
                losses, grad_tensors=grad, inputs=list(params), retain_graph=True
            )
        torch.autograd.backward(losses.sum(), inputs=rest)
    else:
        torch.autograd.backward(losses, grad_tensors=grad, inputs=list(params))
