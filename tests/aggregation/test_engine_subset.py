"""The subset engine: G over a parameter subset, the weights applied to every shared one."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import labelgrad as lg


class Mean:
    """TorchJD's Mean: w = 1/K, i.e. the gradient of losses.mean()."""

    def weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        return torch.full((k,), 1.0 / k, dtype=gramian.dtype, device=gramian.device)


class Sum:
    """w = 1: the gradient of losses.sum(), the ordinary mean loss of the batch."""

    def weights(self, gramian: Tensor, /) -> Tensor:
        return torch.ones(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)


class InvNorm:
    """A weighting that depends on G: w_k = 1 / sqrt(G_kk) (equalizes the label gradients)."""

    def weights(self, gramian: Tensor, /) -> Tensor:
        return gramian.diagonal().clamp_min(1e-12).rsqrt()


def _model(c: int = 5, d: int = 8) -> tuple[nn.Module, nn.Linear]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, d), nn.Tanh(), nn.Linear(d, d), nn.Tanh()).double()
    head = nn.Linear(d, c).double()
    return trunk, head


def _batch(n: int = 12, c: int = 5) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 2, (n, c), generator=g
    )


def _reference_jacobian(losses: Tensor, params: list[Tensor]) -> list[Tensor]:
    rows = [
        torch.autograd.grad(losses[k], params, retain_graph=True) for k in range(losses.numel())
    ]
    return [torch.stack([r[i] for r in rows]) for i in range(len(params))]


def _gramian(jac: list[Tensor]) -> Tensor:
    flat = torch.cat([j.reshape(j.shape[0], -1) for j in jac], 1)
    return flat @ flat.T


def test_parameter_subset_engine() -> None:
    trunk, head = _model()
    x, y = _batch()
    losses = lg.per_label_losses(head(trunk(x)), y)
    last = list(trunk[2].parameters())
    g_ref = _gramian(_reference_jacobian(losses, last))
    w = InvNorm().weights(g_ref)
    ref = torch.autograd.grad(losses, list(trunk.parameters()), grad_outputs=w, retain_graph=True)
    out = lg.aggregate_backward(losses, shared=trunk, aggregator=InvNorm(), subset=last)
    assert out.engine == "subset"
    torch.testing.assert_close(out.gramian, g_ref)
    for p, r in zip(trunk.parameters(), ref):
        torch.testing.assert_close(p.grad, r)
