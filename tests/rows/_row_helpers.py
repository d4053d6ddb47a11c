"""Shared set-up of the RowRules tests: a small float64 Linear head and seeded gradients."""

from __future__ import annotations

import torch
from torch import Tensor, nn

C, D = 4, 3


def head(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D, C, dtype=dtype)


def grads(step: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(C, D, generator=g, dtype=dtype), torch.randn(C, generator=g, dtype=dtype)


def set_grads(h: nn.Linear, step: int) -> None:
    gw, gb = grads(step, h.weight.dtype)
    h.weight.grad, h.bias.grad = gw.clone(), gb.clone()
