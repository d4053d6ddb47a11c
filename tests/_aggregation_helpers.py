"""Shared set-up of the aggregation tests: reference weightings, a small trunk and head, a batch.

The weightings are written here independently of labelgrad's aggregators, so that the engine
tests compare against plain formulas.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["InvNorm", "Mean", "Sum", "batch", "model"]


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


def model(c: int = 5, d: int = 8) -> tuple[nn.Module, nn.Linear]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, d), nn.Tanh(), nn.Linear(d, d), nn.Tanh()).double()
    head = nn.Linear(d, c).double()
    return trunk, head


def batch(n: int = 12, c: int = 5) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 2, (n, c), generator=g
    )
