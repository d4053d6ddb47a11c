"""Amortized: cached weights between recomputations, buffers that round-trip."""

from __future__ import annotations

import pytest
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


def test_amortized_reuses_weights_and_round_trips() -> None:
    trunk, head = _model()
    x, y = _batch()
    agg = lg.aggregation.Amortized(InvNorm(), every=3)
    first = lg.aggregate_backward(
        lg.per_label_losses(head(trunk(x)), y), shared=trunk, aggregator=agg
    )
    trunk.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    x2 = x.flip(0) * 0.5
    losses = lg.per_label_losses(head(trunk(x2)), y)
    ref_trunk = torch.autograd.grad(
        losses, list(trunk.parameters()), grad_outputs=first.weights, retain_graph=True
    )
    ref_head = torch.autograd.grad(losses.sum(), list(head.parameters()), retain_graph=True)
    second = lg.aggregate_backward(losses, shared=trunk, aggregator=agg)
    assert second.gramian is None
    assert torch.equal(second.weights, first.weights)
    for p, r in zip(trunk.parameters(), ref_trunk):
        torch.testing.assert_close(p.grad, r)
    for p, r in zip(head.parameters(), ref_head):
        torch.testing.assert_close(p.grad, r)
    restored = lg.aggregation.Amortized(InvNorm(), every=3)
    restored.load_state_dict(agg.state_dict())
    assert torch.equal(restored.cached_weights, agg.cached_weights)
    assert int(restored.step) == 2
    assert not restored.due(5)
    assert restored.due(4)


def test_amortized_upgrad_state_dict() -> None:
    agg = lg.aggregation.Amortized(lg.aggregators.UPGrad(), every=4)
    trunk, head = _model()
    x, y = _batch()
    lg.aggregate_backward(lg.per_label_losses(head(trunk(x)), y), shared=trunk, aggregator=agg)
    clone = lg.aggregation.Amortized(lg.aggregators.UPGrad(), every=4)
    clone.load_state_dict(agg.state_dict())
    assert torch.equal(clone.cached_weights, agg.cached_weights)
    assert not clone.due(5)
    with pytest.raises(ValueError, match="cannot be amortized"):
        lg.aggregation.Amortized(lg.aggregators.ConFIG())


def test_a_change_of_k_recomputes_and_the_cached_engine_says_so() -> None:
    from labelgrad.aggregation.engines import CACHED, Call, Options

    trunk, head = _model()
    x, y = _batch()
    agg = lg.aggregation.Amortized(InvNorm(), every=10)
    first = lg.aggregate_backward(
        lg.per_label_losses(head(trunk(x)), y), shared=trunk, aggregator=agg
    )
    losses = lg.per_label_losses(head(trunk(x)), y)
    call = Call(losses, trunk, list(trunk.parameters()), agg, Options())
    assert CACHED.applies(call).code == "cached"
    second = lg.aggregate_backward(losses, shared=trunk, aggregator=agg)
    assert second.reason.endswith("; cached weights (Amortized)")
    assert torch.equal(second.weights, first.weights)
    fewer = lg.per_label_losses(head(trunk(x)), y, groups=[[0, 1], [2, 3, 4]])
    call = Call(fewer, trunk, list(trunk.parameters()), agg, Options())
    assert CACHED.applies(call).code == "due"  # K changed from 5 to 2: recompute
    third = lg.aggregate_backward(fewer, shared=trunk, aggregator=agg)
    assert third.gramian is not None
    assert third.weights.shape == (2,)
    assert int(agg.step) == 3


@pytest.mark.parametrize("aggregator", [None, lg.aggregators.UPGrad, "UPGrad"])
def test_amortized_refuses_what_is_not_an_aggregator(aggregator: object) -> None:
    with pytest.raises(TypeError, match=r"^aggregator must be"):
        lg.aggregation.Amortized(aggregator)
