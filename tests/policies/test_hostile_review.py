"""A hostile review of the policy level (HOSTILE.md), written against the public API only.

Each test builds what a user would pass and compares with an independent float64 reference
written here (autograd of the reweighted or published loss), or expects a one-line error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg

F64 = torch.float64


def clip_reference(g: torch.Tensor, max_norm: float, dims: tuple[int, ...]) -> torch.Tensor:
    g = g.to(F64)
    norm = g.square().sum(dim=dims, keepdim=True).sqrt()
    return g * torch.clamp(max_norm / norm, max=1.0)


# --- 3. Precision and magnitude ------------------------------------------------------------


@pytest.mark.parametrize("which", ["sample", "class"])
@pytest.mark.parametrize("magnitude", [1e-30, 1e-20, 1.0, 1e20, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clipping_is_exact_at_every_representable_magnitude(which, magnitude, dtype):
    """The squares of 1e20 overflow float32 and those of 1e-20 vanish: the norm must not."""
    g = torch.Generator().manual_seed(0)
    up = (torch.randn(5, 3, generator=g, dtype=F64) * magnitude).to(dtype)
    max_norm = 0.5 * magnitude
    policy = lg.clip_per_sample(max_norm) if which == "sample" else lg.clip_per_class(max_norm)
    z = torch.zeros(5, 3, dtype=dtype, requires_grad=True)
    (got,) = torch.autograd.grad(policy(z), z, up)
    want = clip_reference(up, max_norm, (1,) if which == "sample" else (0,))
    rtol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.to(F64), want, rtol=rtol, atol=0.0)
    # every group was over the threshold here, so each ends at norm max_norm
    dim = 1 if which == "sample" else 0
    norms = got.to(F64).square().sum(dim).sqrt()
    torch.testing.assert_close(norms, torch.full_like(norms, max_norm), rtol=rtol * 10, atol=0.0)


def test_clipping_leaves_a_group_with_inf_or_nan_untouched():
    up = torch.tensor([[float("inf"), 1.0, 2.0], [3.0, 4.0, 0.0], [float("nan"), 1.0, 1.0]])
    z = torch.zeros(3, 3, requires_grad=True)
    (got,) = torch.autograd.grad(lg.clip_per_sample(1.0)(z), z, up)
    torch.testing.assert_close(got[0], up[0], equal_nan=True)
    torch.testing.assert_close(got[2], up[2], equal_nan=True)
    torch.testing.assert_close(got[1], torch.tensor([0.6, 0.8, 0.0]))
