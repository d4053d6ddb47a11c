"""aggregate_backward: engines against loop-of-autograd references, accumulation, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelgrad as lg
from _aggregation_helpers import InvNorm, Mean, Sum, batch, model


class SumJacobian(lg.aggregators.JacobianAggregator):
    """A Jacobian aggregator: the column sum of J (equals Sum)."""

    def _aggregate(self, jacobian: Tensor, /) -> Tensor:
        return jacobian.sum(0)


def _reference_jacobian(losses: Tensor, params: list[Tensor]) -> list[Tensor]:
    rows = [
        torch.autograd.grad(losses[k], params, retain_graph=True) for k in range(losses.numel())
    ]
    return [torch.stack([r[i] for r in rows]) for i in range(len(params))]


def _gramian(jac: list[Tensor]) -> Tensor:
    flat = torch.cat([j.reshape(j.shape[0], -1) for j in jac], 1)
    return flat @ flat.T


def _grads(params: list[Tensor]) -> list[Tensor]:
    return [p.grad.clone() for p in params]  # type: ignore[union-attr]


@pytest.mark.parametrize("groups", [None, [[0, 3], [1], [2, 4]]])
@pytest.mark.parametrize("batched", [None, False])
def test_exact_engine_matches_loop_reference(
    groups: list[list[int]] | None, batched: bool | None
) -> None:
    trunk, head = model()
    x, y = batch()
    shared = list(trunk.parameters())
    losses = lg.per_label_losses(head(trunk(x)), y, groups=groups)
    jac = _reference_jacobian(losses, shared)
    g_ref = _gramian(jac)
    w_ref = InvNorm().weights(g_ref)
    head_ref = torch.autograd.grad(losses.sum(), list(head.parameters()), retain_graph=True)
    out = lg.aggregate_backward(
        losses, shared=shared, aggregator=InvNorm(), engine="exact", batched=batched, chunk_size=2
    )
    assert out.engine == "exact"
    torch.testing.assert_close(out.gramian, g_ref, rtol=1e-5, atol=1e-8)
    for p, j in zip(shared, jac, strict=True):
        torch.testing.assert_close(p.grad, torch.tensordot(w_ref, j, dims=1), rtol=1e-5, atol=1e-8)
    for p, r in zip(head.parameters(), head_ref, strict=True):
        torch.testing.assert_close(p.grad, r)


def test_mean_equals_backward_of_mean_and_sum_equals_plain_step() -> None:
    trunk, head = model()
    x, y = batch()
    shared = list(trunk.parameters())
    losses = lg.per_label_losses(head(trunk(x)), y)
    ref_shared = torch.autograd.grad(losses.mean(), shared, retain_graph=True)
    ref_head = torch.autograd.grad(losses.sum(), list(head.parameters()), retain_graph=True)
    lg.aggregate_backward(losses, shared=trunk, aggregator=Mean())
    for p, r in zip(shared, ref_shared, strict=True):
        torch.testing.assert_close(p.grad, r)
    for p, r in zip(head.parameters(), ref_head, strict=True):
        torch.testing.assert_close(p.grad, r)

    # Sum weights reproduce an ordinary training step of the mean BCE loss, for every parameter.
    trunk2, head2 = model()
    F.binary_cross_entropy_with_logits(head2(trunk2(x)), y.double()).backward()
    trunk.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    lg.aggregate_backward(lg.per_label_losses(head(trunk(x)), y), shared=trunk, aggregator=Sum())
    for a, b in zip(
        [*trunk.parameters(), *head.parameters()],
        [*trunk2.parameters(), *head2.parameters()],
        strict=True,
    ):
        torch.testing.assert_close(a.grad, b.grad)


def test_gradients_accumulate() -> None:
    trunk, head = model()
    x, y = batch()
    params = [*trunk.parameters(), *head.parameters()]
    lg.aggregate_backward(
        lg.per_label_losses(head(trunk(x)), y), shared=trunk, aggregator=InvNorm()
    )
    once = _grads(params)
    lg.aggregate_backward(
        lg.per_label_losses(head(trunk(x)), y), shared=trunk, aggregator=InvNorm()
    )
    for p, g in zip(params, once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)


def test_jacobian_aggregator_and_no_other_parameters() -> None:
    trunk, head = model()
    x, y = batch()
    everything = [*trunk.parameters(), *head.parameters()]
    losses = lg.per_label_losses(head(trunk(x)), y)
    ref = torch.autograd.grad(losses.sum(), everything, retain_graph=True)
    out = lg.aggregate_backward(losses, shared=everything, aggregator=SumJacobian())
    assert out.weights is None
    for p, r in zip(everything, ref, strict=True):
        torch.testing.assert_close(p.grad, r)
    with pytest.raises(ValueError, match="exact"):
        lg.aggregate_backward(
            lg.per_label_losses(head(trunk(x)), y),
            shared=trunk,
            aggregator=SumJacobian(),
            engine="representation",
            features=x,
        )


def test_stateful_policy_counts_batch_once() -> None:
    trunk, head = model()
    x, y = batch()
    p1, p2 = lg.eqlv2(num_classes=5).double(), lg.eqlv2(num_classes=5).double()
    lg.per_label_losses(p1(head(trunk(x)), y), y).sum().backward()
    lg.aggregate_backward(
        lg.per_label_losses(p2(head(trunk(x)), y), y), shared=trunk, aggregator=Sum()
    )
    for a, b in zip(p1.state_dict().values(), p2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_errors() -> None:
    trunk, head = model()
    x, y = batch()

    def losses() -> Tensor:
        return lg.per_label_losses(head(trunk(x)), y)

    with pytest.raises(ValueError, match="1-D"):
        lg.aggregate_backward(losses().reshape(1, -1), shared=trunk, aggregator=Mean())
    unused = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not reach"):
        lg.aggregate_backward(losses(), shared=[*trunk.parameters(), unused], aggregator=Mean())
    with pytest.raises(ValueError, match="not on the autograd graph"):
        lg.aggregate_backward(
            losses(),
            shared=trunk,
            aggregator=Mean(),
            features=torch.zeros(3, requires_grad=True) * 1,
        )
    with pytest.raises(ValueError, match=r"must return a \(5,\)"):
        lg.aggregate_backward(
            losses(),
            shared=trunk,
            aggregator=type("Bad", (), {"weights": lambda self, g: g[:2, 0]})(),
        )
    with pytest.raises(ValueError, match="engine must be"):
        lg.aggregate_backward(losses(), shared=trunk, aggregator=Mean(), engine="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs features"):
        lg.aggregate_backward(losses(), shared=trunk, aggregator=Mean(), engine="representation")
    with pytest.raises(TypeError, match="iterable of parameters"):
        lg.aggregate_backward(losses(), shared=3, aggregator=Mean())  # type: ignore[arg-type]
    bad = head(trunk(x))
    bad = bad * torch.tensor([1.0, float("inf"), 1.0, 1.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="not finite"):
        lg.aggregate_backward(lg.per_label_losses(bad, y), shared=trunk, aggregator=Mean())
    trunk.zero_grad(set_to_none=True)
    bad = head(trunk(x)) * torch.tensor([1.0, float("inf"), 1.0, 1.0, 1.0], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lg.aggregate_backward(
            lg.per_label_losses(bad, y), shared=trunk, aggregator=Mean(), nonfinite="propagate"
        )
    assert not all(bool(torch.isfinite(p.grad).all()) for p in trunk.parameters())


def test_with_lg_aggregators_upgrad_and_config() -> None:
    trunk, head = model()
    x, y = batch()
    shared = list(trunk.parameters())
    losses = lg.per_label_losses(head(trunk(x)), y)
    jac = _reference_jacobian(losses, shared)
    flat = torch.cat([j.reshape(j.shape[0], -1) for j in jac], 1)
    w_ref = lg.aggregators.UPGrad().weights(flat @ flat.T)
    update_ref = lg.aggregators.ConFIG().aggregate(flat)
    out = lg.aggregate_backward(losses, shared=shared, aggregator=lg.aggregators.UPGrad())
    torch.testing.assert_close(out.weights, w_ref)
    for p, j in zip(shared, jac, strict=True):
        torch.testing.assert_close(p.grad, torch.tensordot(w_ref, j, dims=1))
    trunk.zero_grad(set_to_none=True)
    losses = lg.per_label_losses(head(trunk(x)), y)
    lg.aggregate_backward(losses, shared=shared, aggregator=lg.aggregators.ConFIG())
    got = torch.cat([p.grad.reshape(-1) for p in shared])  # type: ignore[union-attr]
    torch.testing.assert_close(got, update_ref)


def test_exact_engine_matches_torchjd_mtl_backward() -> None:
    torchjd = pytest.importorskip("torchjd", reason="TorchJD is an optional test dependency")
    from torchjd.aggregation import UPGrad as JDUPGrad
    from torchjd.autojac import jac_to_grad, mtl_backward

    del torchjd
    trunk, head = model()
    x, y = batch()
    feats = trunk(x)
    losses = lg.per_label_losses(head(feats), y)
    mtl_backward(list(losses.unbind()), features=feats, retain_graph=True)
    jac_to_grad(list(trunk.parameters()), JDUPGrad())
    ref = [p.grad.clone() for p in [*trunk.parameters(), *head.parameters()]]  # type: ignore[union-attr]
    for p in [*trunk.parameters(), *head.parameters()]:
        p.grad = None
    losses = lg.per_label_losses(head(trunk(x)), y)
    lg.aggregate_backward(losses, shared=trunk, aggregator=lg.aggregators.UPGrad())
    for p, r in zip([*trunk.parameters(), *head.parameters()], ref, strict=True):
        torch.testing.assert_close(p.grad, r, rtol=1e-4, atol=1e-7)
