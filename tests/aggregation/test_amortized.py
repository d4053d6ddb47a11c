"""Amortized: cached weights between recomputations, buffers that round-trip."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from _aggregation_helpers import InvNorm, batch, model


def test_amortized_reuses_weights_and_round_trips() -> None:
    trunk, head = model()
    x, y = batch()
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
    for p, r in zip(trunk.parameters(), ref_trunk, strict=True):
        torch.testing.assert_close(p.grad, r)
    for p, r in zip(head.parameters(), ref_head, strict=True):
        torch.testing.assert_close(p.grad, r)
    restored = lg.aggregation.Amortized(InvNorm(), every=3)
    restored.load_state_dict(agg.state_dict())
    assert torch.equal(restored.cached_weights, agg.cached_weights)
    assert int(restored.step) == 2
    assert not restored.due(5)
    assert restored.due(4)


def test_amortized_upgrad_state_dict() -> None:
    agg = lg.aggregation.Amortized(lg.aggregators.UPGrad(), every=4)
    trunk, head = model()
    x, y = batch()
    lg.aggregate_backward(lg.per_label_losses(head(trunk(x)), y), shared=trunk, aggregator=agg)
    clone = lg.aggregation.Amortized(lg.aggregators.UPGrad(), every=4)
    clone.load_state_dict(agg.state_dict())
    assert torch.equal(clone.cached_weights, agg.cached_weights)
    assert not clone.due(5)
    with pytest.raises(TypeError, match="cannot be amortized"):
        lg.aggregation.Amortized(lg.aggregators.ConFIG())


def test_a_change_of_k_recomputes_and_the_cached_engine_says_so() -> None:
    from labelgrad.aggregation.engines import CACHED, Call, Options

    trunk, head = model()
    x, y = batch()
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


def _amortized_step(agg: object, x: torch.Tensor, nonfinite: str, nan_grad: bool = False) -> str:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    losses = lg.per_label_losses(net(x), torch.randint(0, 2, (x.shape[0], 2)))
    if nan_grad:  # a finite loss whose gradient is NaN: sqrt at 0 (0 * inf)
        losses = losses + (net[0].weight * 0).sum().clamp(min=0).sqrt()
    r = lg.aggregate_backward(losses, shared=net[0], aggregator=agg, nonfinite=nonfinite)  # type: ignore[arg-type]
    grad = net[0].weight.grad
    assert grad is not None
    return f"{r.engine}:{bool(grad.isfinite().all())}"


@pytest.mark.parametrize("nan_grad", [False, True], ids=["nan_input", "nan_gradient"])
@pytest.mark.parametrize("step", [0, 1], ids=["recomputed", "cached"])
def test_amortized_nonfinite_raise_on_every_step(step: int, nan_grad: bool) -> None:
    # Regression: a NaN input on a cached step wrote the NaN gradient without an error (only the
    # recomputed step, which checks its Gramian, raised).
    agg = lg.aggregation.Amortized(lg.aggregators.UPGrad(), every=2)
    finite = torch.randn(5, 3)
    hostile = finite.clone()
    if not nan_grad:
        hostile[2, 1] = float("nan")
    for _ in range(step):
        assert _amortized_step(agg, finite, "raise").endswith(":True")
    with pytest.raises(ValueError, match="not finite") as info:
        _amortized_step(agg, hostile, "raise", nan_grad=nan_grad)
    assert "\n" not in str(info.value)
    # "propagate" writes the non-finite gradient on both kinds of step.
    agg = lg.aggregation.Amortized(lg.aggregators.UPGrad(), every=2)
    for _ in range(step):
        _amortized_step(agg, finite, "propagate")
    engine = "cached" if step == 1 else "exact"
    assert _amortized_step(agg, hostile, "propagate", nan_grad=nan_grad) == f"{engine}:False"
