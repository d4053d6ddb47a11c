"""lg.rows.tau_normalize and lg.rows.align_weights against direct float64 implementations of the
papers' formulas (issue 21, item 1), and the hostile inputs of HOSTILE.md."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def linear(dtype: torch.dtype = torch.float32, c: int = 5, d: int = 3, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    head = nn.Linear(d, c, dtype=dtype)
    with torch.no_grad():  # spread the row norms, as long-tailed training does
        head.weight.mul_(torch.linspace(0.2, 3.0, c, dtype=dtype)[:, None])
    return head


def tau_direct(w: Tensor, tau: float) -> Tensor:
    """Kang et al.'s pnorm, row by row in float64: w_c / ||w_c||^tau (a zero row stays zero)."""
    w64 = w.detach().double()
    out = w64.clone()
    for c in range(w64.shape[0]):
        norm = float(w64[c].norm())
        if norm > 0:
            out[c] = w64[c] / norm**tau
    return out.to(w.dtype)


def align_direct(w: Tensor, new: list[int], old: list[int]) -> Tensor:
    """Zhao et al.'s weight aligning in float64: new rows times mean old norm / mean new norm."""
    w64 = w.detach().double()
    mean_old = sum(float(w64[c].norm()) for c in old) / len(old)
    mean_new = sum(float(w64[c].norm()) for c in new) / len(new)
    gamma = mean_old / mean_new if mean_new > 0 else 1.0
    out = w64.clone()
    for c in new:
        out[c] = w64[c] * gamma
    return out.to(w.dtype)


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.0, 2.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tau_normalize_equals_the_direct_formula(dtype: torch.dtype, tau: float):
    head = linear(dtype)
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    out = lg.rows.tau_normalize(head, tau=tau)
    assert isinstance(out, nn.Linear) and out is not head
    want = tau_direct(w0, tau)
    tol = {"rtol": 1e-15, "atol": 0} if dtype == torch.float64 else {}
    torch.testing.assert_close(out.weight.detach(), want, **tol)
    assert torch.equal(out.bias, b0)  # the bias is not rescaled
    assert torch.equal(head.weight, w0)  # not in place
    assert out.weight.dtype == dtype and out.weight.requires_grad
    if tau == 0.0:
        assert torch.equal(out.weight, w0)  # a bitwise no-op


def test_tau_one_gives_unit_rows_and_keeps_directions():
    w = linear(torch.float64).weight.detach()
    out = lg.rows.tau_normalize(w)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5, dtype=torch.float64))
    cos = (out * w).sum(dim=1) / w.norm(dim=1)
    torch.testing.assert_close(cos, torch.ones(5, dtype=torch.float64))


def test_tau_normalize_in_place_and_on_a_tensor():
    head = linear(torch.float64)
    w0 = head.weight.detach().clone()
    assert lg.rows.tau_normalize(head, tau=0.5, inplace=True) is head
    torch.testing.assert_close(head.weight.detach(), tau_direct(w0, 0.5), rtol=1e-15, atol=0)
    t = w0.clone()
    out = lg.rows.tau_normalize(t, tau=0.5)
    assert torch.equal(t, w0) and torch.equal(out, head.weight.detach())
    out.fill_(7.0)  # the result does not alias the input
    assert torch.equal(t, w0)
    assert lg.rows.tau_normalize(t, tau=0.5, inplace=True) is t
    assert torch.equal(t, head.weight.detach())


def test_tau_normalize_rows_of_more_than_one_axis_and_zero_rows():
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64)  # e.g. a conv classifier
    w[2] = 0.0
    out = lg.rows.tau_normalize(w, tau=1.0)
    torch.testing.assert_close(
        out.flatten(1).norm(dim=1), torch.tensor([1.0, 1.0, 0.0, 1.0]).double()
    )
    assert torch.equal(out[2], torch.zeros(3, 2, 2, dtype=torch.float64))
    want = tau_direct(w.flatten(1), 0.7).reshape(w.shape)
    torch.testing.assert_close(lg.rows.tau_normalize(w, 0.7), want, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [
        (torch.float32, 1e30),
        (torch.float32, 1e-30),
        (torch.float64, 1e200),
        (torch.float64, 1e-200),
    ],
)
def test_tau_normalize_huge_and_tiny_rows(dtype: torch.dtype, scale: float):
    """Squares that leave the dtype's range neither zero a row nor make it NaN."""
    base = torch.tensor([[3.0, 4.0], [0.6, 0.8]], dtype=torch.float64)
    w = (base * scale).to(dtype)
    out = lg.rows.tau_normalize(w, tau=1.0)
    torch.testing.assert_close(out.double(), torch.tensor([[0.6, 0.8], [0.6, 0.8]]).double())
    half = lg.rows.tau_normalize(w, tau=0.5)  # w / sqrt(norm): norms become sqrt(norm)
    got = (half.double() / scale**0.5).norm(dim=1)  # sqrt(norm / scale), in range
    torch.testing.assert_close(got, torch.tensor([5.0, 1.0], dtype=torch.float64).sqrt())


def test_nan_and_inf_rows_propagate_as_the_formula_does():
    w = torch.tensor([[float("nan"), 1.0], [float("inf"), 1.0], [3.0, 4.0]])
    out = lg.rows.tau_normalize(w)
    assert out[0].isnan().all() and out[1, 0].isnan() and out[1, 1] == 0.0
    torch.testing.assert_close(out[2], torch.tensor([0.6, 0.8]))
    aligned = lg.rows.align_weights(w, new_classes=[0], old_classes=[2])
    assert aligned[0].isnan().all() and torch.equal(aligned[1:], w[1:])
    aligned = lg.rows.align_weights(w, new_classes=[2], old_classes=[0])
    assert aligned[2].isnan().all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": -0.5}, ValueError, "tau must be finite and non-negative"),
        ({"tau": float("nan")}, ValueError, "tau must be finite"),
        ({"tau": float("inf")}, ValueError, "tau must be finite"),
        ({"tau": True}, TypeError, "tau must be a number"),
        ({"tau": "1"}, TypeError, "tau must be a number"),
    ],
)
def test_tau_normalize_refuses_bad_tau(kwargs: dict[str, Any], error: type, match: str):
    with pytest.raises(error, match=match):
        lg.rows.tau_normalize(linear(), **kwargs)


@pytest.mark.parametrize(
    ("head", "error", "match"),
    [
        (torch.ones(4), ValueError, "shape \\(C, D, ...\\)"),
        (torch.ones(4, 2, dtype=torch.long), TypeError, "floating point"),
        (nn.Conv2d(2, 3, 1), TypeError, "nn.Linear or a weight tensor"),
        ([[1.0, 2.0]], TypeError, "nn.Linear or a weight tensor"),
    ],
)
def test_both_refuse_what_is_not_a_head(head: Any, error: type, match: str):
    with pytest.raises(error, match="tau_normalize: .*" + match):
        lg.rows.tau_normalize(head)
    with pytest.raises(error, match="align_weights: .*" + match):
        lg.rows.align_weights(head, new_classes=[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("new", "old"), [([3, 4], None), ([4], [0, 1]), ([0, 2], [1, 3, 4]), ([1, 3], [4])]
)
def test_align_weights_equals_the_direct_formula(
    dtype: torch.dtype, new: list[int], old: list[int] | None
):
    head = linear(dtype, seed=1)
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    olds = [c for c in range(5) if c not in new] if old is None else old
    out = lg.rows.align_weights(head, new_classes=new, old_classes=old)
    want = align_direct(w0, new, olds)
    tol = {"rtol": 1e-15, "atol": 0} if dtype == torch.float64 else {}
    torch.testing.assert_close(out.weight.detach(), want, **tol)
    for c in range(5):
        if c not in new:
            assert torch.equal(out.weight[c], w0[c]), f"row {c} is not new and must keep its bits"
    assert torch.equal(out.bias, b0) and torch.equal(head.weight, w0)
    means = [out.weight.detach().double()[cs].norm(dim=1).mean() for cs in (new, olds)]
    torch.testing.assert_close(
        means[0], means[1], rtol=2e-2 if dtype.itemsize < 4 else 1e-6, atol=0
    )


def test_align_weights_is_a_bitwise_no_op_when_the_means_already_agree():
    w = torch.randn(4, 3)
    w[2:] = w[:2].flip(0)  # the new rows are the old rows: equal mean norms
    assert torch.equal(lg.rows.align_weights(w, new_classes=[2, 3]), w)


def test_align_weights_in_place_masks_and_zero_new_rows():
    head = linear(torch.float64, seed=2)
    w0 = head.weight.detach().clone()
    mask = torch.tensor([False, False, False, True, True])
    assert lg.rows.align_weights(head, mask, inplace=True) is head
    torch.testing.assert_close(head.weight.detach(), align_direct(w0, [3, 4], [0, 1, 2]))
    w = w0.clone()
    w[3:] = 0.0
    out = lg.rows.align_weights(w, new_classes=[3, 4])
    assert torch.equal(out, w)  # nothing to scale: the rows stay zero, not NaN


@pytest.mark.parametrize(
    ("new", "old", "error", "match"),
    [
        ([], None, ValueError, "new_classes is empty"),
        ([0, 1, 2, 3, 4], None, ValueError, "no old classes"),
        ([1], [], ValueError, "no old classes"),
        ([1, 2], [2, 3], ValueError, "classes \\[2\\] are both old and new"),
        ([5], None, ValueError, "new_classes"),
        ([1], [7], ValueError, "old_classes"),
        ([1.0], None, TypeError, "new_classes"),
        (torch.tensor([True, False]), None, ValueError, "new_classes"),
    ],
)
def test_align_weights_refuses_bad_class_sets(new: Any, old: Any, error: type, match: str):
    with pytest.raises(error, match=match):
        lg.rows.align_weights(linear(), new_classes=new, old_classes=old)


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e30), (torch.float64, 1e-200)])
def test_align_weights_only_ratios_matter(dtype: torch.dtype, scale: float):
    base = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 1.0]], dtype=torch.float64)
    out = lg.rows.align_weights((base * scale).to(dtype), new_classes=[2])  # gamma = 7.5
    want = base.clone()
    want[2] *= 7.5
    torch.testing.assert_close(out.double() / scale, want)


def test_exported_at_the_top_level():
    assert lg.tau_normalize is lg.rows.tau_normalize
    assert lg.align_weights is lg.rows.align_weights
