"""Shared references for the policy tests (tests/policies/): a float64 model and its gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TOL = {"rtol": 0.0, "atol": 1e-6}


def make_model(d_in: int = 6, c: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, c)).double()


def param_grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


def assert_grads_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **TOL)


def bce_entries(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(z, y.clamp(min=0).to(z.dtype), reduction="none")
