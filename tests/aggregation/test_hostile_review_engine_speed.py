"""Hostile review of the speed changes to the aggregation engines (issue 24), by a reviewer who
did not write them.

Attacked: the cache of validated group-id tensors (edits that autograd's version counter does
not see: a NumPy array sharing the memory, writes through ``.data``), the class-index CE losses
that no longer build one-hot targets (ignore_index, non-finite logits of an ignored sample,
groups, N = 0, all ignored), the cached 0-d tensors (one process, the same tracked trunk, float32
then float64 then float32 again), the one-reduction finiteness checks, and aliasing of returned
ids. The independent reference is per-loss autograd: the shared parameters must receive
``J^T w`` with ``w`` the aggregator's weights on ``J J^T``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelgrad as lg
from _aggregation_helpers import one_thread

A = lg.aggregators
LOSSES = ["bce", "focal", "ce"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _batch(loss: str, n: int = 7, c: int = 4) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64, requires_grad=True)
    if loss == "ce":
        y = torch.randint(0, c, (n,), generator=gen)
    else:
        y = torch.randint(0, 2, (n, c), generator=gen).float()
    return logits, y


# --- the cache of validated group ids ----------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
def test_groups_edited_through_numpy_are_read_again(loss: str) -> None:
    """Before: a NumPy-backed int32 group tensor edited in place kept its first grouping (the
    cache was keyed on the version counter, which NumPy writes do not bump): silently wrong."""
    logits, y = _batch(loss)
    arr = np.array([0, 0, 1, 1], dtype=np.int32)
    groups = torch.from_numpy(arr)
    lg.per_label_losses(logits, y, loss=loss, groups=groups)
    arr[:] = [0, 1, 1, 1]
    got = lg.per_label_losses(logits, y, loss=loss, groups=groups)
    want = lg.per_label_losses(logits, y, loss=loss, groups=[[0], [1, 2, 3]])
    assert torch.equal(got, want)


@pytest.mark.parametrize("loss", LOSSES)
def test_groups_edited_through_data_are_validated_again(loss: str) -> None:
    """Writes through ``.data`` do not bump the version either: an edit that leaves a group id
    unused or out of range must be the usual one-line error, and a valid edit must count."""
    logits, y = _batch(loss)
    groups = torch.tensor([0, 0, 1, 1])
    lg.per_label_losses(logits, y, loss=loss, groups=groups)
    groups.data[1] = 5  # ids 2..4 unused (before: an IndexError from deep inside)
    with pytest.raises(ValueError, match="unused ids"):
        lg.per_label_losses(logits, y, loss=loss, groups=groups)
    groups.data[:] = 0  # one group (before: K = 2 with a silent all-zero second loss)
    got = lg.per_label_losses(logits, y, loss=loss, groups=groups)
    assert got.shape == (1,)
    want = lg.per_label_losses(logits, y, loss=loss, groups=[[0, 1, 2, 3]])
    assert torch.equal(got, want)


def test_returned_group_ids_do_not_alias_the_cache_or_the_input() -> None:
    groups = torch.tensor([1, 0, 1, 0])
    for _ in range(3):  # a miss, then hits
        ids, k = lg.aggregation.group_ids(groups, 4)
        assert (ids.tolist(), k) == ([1, 0, 1, 0], 2)
        ids.fill_(7)
        assert groups.tolist() == [1, 0, 1, 0]


def test_groups_cache_refuses_a_tensor_of_another_class_count() -> None:
    groups = torch.tensor([0, 1, 1])
    assert lg.aggregation.group_ids(groups, 3)[1] == 2
    with pytest.raises(ValueError, match="shape"):
        lg.aggregation.group_ids(groups, 4)


# --- class-index CE without one-hot targets ----------------------------------------------------


def _ce_reference(z: Tensor, y: Tensor, group_of: list[int], k: int, ignore: int) -> Tensor:
    """Loss k: sum of CrossEntropyLoss terms of samples labelled in group k / non-ignored N."""
    valid = y != ignore
    count = max(int(valid.sum()), 1)
    terms = [
        F.cross_entropy(z[i : i + 1], y[i : i + 1], reduction="sum")
        for i in range(z.shape[0])
        if bool(valid[i])
    ]
    owners = [group_of[int(y[i])] for i in range(z.shape[0]) if bool(valid[i])]
    out = [
        z.sum() * 0
        + sum((t for t, o in zip(terms, owners, strict=True) if o == g), z.new_zeros(()))
        for g in range(k)
    ]
    return torch.stack(out) / count


@pytest.mark.parametrize("ignored_logits", ["finite", "inf", "nan"])
@pytest.mark.parametrize("groups", [None, [[0, 2], [1], [3]], "tensor"])
def test_ce_index_losses_with_ignored_samples_equal_cross_entropy(
    groups: object, ignored_logits: str
) -> None:
    logits, y = _batch("ce", n=9)
    y = y.clone()
    y[[1, 4]] = -100
    z = logits.detach().clone()
    if ignored_logits != "finite":
        z[1, 2] = float(ignored_logits)
    z.requires_grad_(True)
    g = torch.tensor([0, 1, 0, 2]) if groups == "tensor" else groups
    group_of, k = ([0, 1, 2, 3], 4) if groups is None else ([0, 1, 0, 2], 3)
    got = lg.per_label_losses(z, y, loss="ce", groups=g)
    want = _ce_reference(
        z[[i for i in range(9) if i not in (1, 4)]], y[y != -100], group_of, k, -100
    )
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-15)
    # The gradient of their sum is CrossEntropyLoss(ignore_index)'s (NaN where torch gives NaN).
    (dz,) = torch.autograd.grad(got.sum(), z)
    (ref,) = torch.autograd.grad(F.cross_entropy(z, y, ignore_index=-100), z)
    assert torch.allclose(dz, ref, rtol=1e-12, atol=1e-15, equal_nan=True)


@pytest.mark.parametrize("n", [0, 5])
def test_ce_index_all_ignored_or_empty_stays_on_the_graph_with_zero_gradient(n: int) -> None:
    z = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    y = torch.full((n,), -100)
    losses = lg.per_label_losses(z, y, loss="ce")
    assert losses.shape == (4,) and bool((losses == 0).all()) and losses.requires_grad
    (dz,) = torch.autograd.grad(losses.sum(), z)
    assert bool((dz == 0).all())


# --- engines: dtype changes in one process, against per-loss autograd ------------------------


def _jacobian_at(losses: Tensor, params: list[Tensor]) -> Tensor:
    return _jacobian(losses, params)  # type: ignore[arg-type]


def _jacobian(losses: Tensor, params: list[nn.Parameter]) -> Tensor:
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


ENGINES = ["auto", "exact", "representation", "sample_gramian"]


@pytest.mark.parametrize("aggregator", ["UPGrad", "MGDA", "Mean", "DualProj"])
@pytest.mark.parametrize("engine", ENGINES)
def test_engines_across_dtype_changes_equal_per_loss_autograd(engine: str, aggregator: str) -> None:
    """The same tracked trunk and the same group tensor, float32 then float64 then float32: the
    cached 0-d constants and the group cache must not carry a dtype across calls."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh())
    head = nn.Linear(6, 4)
    lg.aggregation.track(trunk)
    groups = torch.tensor([0, 1, 0, 2])
    agg = A.available()[aggregator]()
    x64 = torch.randn(8, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, -100, 1, 3, -100])
    for dtype in (torch.float32, torch.float64, torch.float32):
        trunk.to(dtype), head.to(dtype)
        shared = list(trunk.parameters())
        for p in [*shared, *head.parameters()]:
            p.grad = None
        features = trunk(x64.to(dtype))
        losses = lg.per_label_losses(head(features), y, loss="ce", groups=groups)
        assert losses.dtype == dtype
        jac = _jacobian(losses, shared)
        jac_features = _jacobian_at(losses, [features])
        kwargs: dict[str, object] = {}
        if engine == "representation":
            kwargs = {"features": features, "head": head}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = lg.aggregate_backward(
                losses,
                shared=trunk if engine == "sample_gramian" else shared,
                aggregator=agg,
                engine=engine,
                **kwargs,
            )
        tol = 2e-4 if dtype == torch.float32 else 1e-9
        # The Gramian: J J^T, or on the representation the Gramian of the per-loss gradients
        # at the features (both by per-loss autograd).
        ref_j = (jac_features if result.engine == "representation" else jac).double()
        ref_g = ref_j @ ref_j.T
        assert result.gramian is not None and result.weights is not None
        g_scale = float(ref_g.abs().max()) or 1.0
        assert float((result.gramian.double() - ref_g).abs().max()) <= tol * g_scale
        w = A.available()[aggregator]().weights(ref_g)
        assert torch.allclose(result.weights.double(), w, rtol=tol, atol=tol)
        # The shared parameters received J^T w.
        want = jac.double().T @ result.weights.double()
        got = torch.cat([p.grad.reshape(-1) for p in shared])  # type: ignore[union-attr]
        assert got.dtype == dtype
        scale = float(want.abs().max()) or 1.0
        assert float((got.double() - want).abs().max()) <= tol * scale, (engine, dtype)
