"""clip_per_class and clip_per_sample, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from _policy_helpers import TOL

pytestmark = pytest.mark.usefixtures("float64_default")


def clip_reference(g: torch.Tensor, max_norm: float, dims) -> torch.Tensor:
    norm = g.square().sum(dim=dims, keepdim=True).sqrt()
    factor = torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm))
    return g * factor


@pytest.mark.parametrize(
    ("policy", "dims"), [(lg.clip_per_class(0.3), (0, 2, 3)), (lg.clip_per_sample(0.3), (1, 2, 3))]
)
def test_clipping_matches_formula(policy, dims):
    torch.manual_seed(0)
    z = torch.randn(4, 3, 2, 2, requires_grad=True)  # (N, C, H, W)
    upstream = torch.randn(4, 3, 2, 2)
    upstream[0] *= 1e-3  # some groups below the threshold
    (g,) = torch.autograd.grad(policy(z), z, upstream)
    torch.testing.assert_close(g, clip_reference(upstream, 0.3, dims), **TOL)
    assert torch.all(g.square().sum(dim=dims).sqrt() <= 0.3 + 1e-12)
