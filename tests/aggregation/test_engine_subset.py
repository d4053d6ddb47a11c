"""The subset engine: G over a parameter subset, the weights applied to every shared one."""

from __future__ import annotations

import torch
from torch import Tensor

import labelgrad as lg
from _aggregation_helpers import InvNorm, batch, model


def _reference_jacobian(losses: Tensor, params: list[Tensor]) -> list[Tensor]:
    rows = [
        torch.autograd.grad(losses[k], params, retain_graph=True) for k in range(losses.numel())
    ]
    return [torch.stack([r[i] for r in rows]) for i in range(len(params))]


def _gramian(jac: list[Tensor]) -> Tensor:
    flat = torch.cat([j.reshape(j.shape[0], -1) for j in jac], 1)
    return flat @ flat.T


def test_parameter_subset_engine() -> None:
    trunk, head = model()
    x, y = batch()
    losses = lg.per_label_losses(head(trunk(x)), y)
    last = list(trunk[2].parameters())
    g_ref = _gramian(_reference_jacobian(losses, last))
    w = InvNorm().weights(g_ref)
    ref = torch.autograd.grad(losses, list(trunk.parameters()), grad_outputs=w, retain_graph=True)
    out = lg.aggregate_backward(losses, shared=trunk, aggregator=InvNorm(), subset=last)
    assert out.engine == "subset"
    torch.testing.assert_close(out.gramian, g_ref)
    for p, r in zip(trunk.parameters(), ref, strict=True):
        torch.testing.assert_close(p.grad, r)
