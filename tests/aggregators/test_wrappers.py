"""The weighting wrappers (``WeightingWrapper``: Amortized, CRMOGM, synchronized): each refuses a
Jacobian aggregator, delegates ``reset`` and ``diagnostics`` to the wrapped weighting, calls it
through its public ``weights``, and round-trips ``state_dict`` (its own state and the wrapped one's).

The factories cover every ``WeightingWrapper`` subclass in labelgrad (checked), so a new wrapper
must be added here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import labelgrad as lg
from aggregators.hard_jacobians import random_jacobian, sequence
from labelgrad.integrations.distributed import SynchronizedGramian, synchronized

A = lg.aggregators

Wrap = Callable[[lg.aggregators.GramianWeighting], lg.aggregators.WeightingWrapper]
WRAPPERS: dict[str, Wrap] = {
    "Amortized": lambda inner: lg.aggregation.Amortized(inner, every=2),
    "CRMOGM": lambda inner: A.CRMOGM(inner, alpha=0.5),
    "SynchronizedGramian": synchronized,
}


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_every_wrapper_is_covered() -> None:
    for info in pkgutil.walk_packages(lg.__path__, "labelgrad."):
        if not info.name.startswith("labelgrad.app"):
            try:
                importlib.import_module(info.name)
            except ImportError:  # an integration whose optional dependency is not installed
                continue
    found = {c.__name__ for c in _subclasses(A.WeightingWrapper) if c.__module__.startswith("lab")}
    assert found == set(WRAPPERS)
    assert isinstance(synchronized(A.Mean()), SynchronizedGramian)


def _feed(agg: lg.aggregators.WeightingWrapper, g: Tensor) -> Tensor:
    """One step as ``aggregate_backward`` takes it (Amortized: recompute when due, else reuse)."""
    if isinstance(agg, lg.aggregation.Amortized):
        k = g.shape[0]
        if agg.due(k):
            w = agg.weights(g)
            agg.store(w)
            return w
        return agg.cached(k, g)
    return agg.weights(g)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_state_dict_round_trips(name: str) -> None:
    wrap = WRAPPERS[name]
    gs = [j @ j.T for j in sequence(random_jacobian(5, 12, seed=51), 7, seed=52)]
    first = wrap(A.PCD())  # a stateful inner weighting: its EMA must travel too
    for g in gs[:3]:
        _feed(first, g)
    state = first.state_dict()
    assert "aggregator.sq_norm_ema" in state
    second = wrap(A.PCD())
    second.load_state_dict(state)
    for key, value in state.items():
        loaded = second.state_dict()[key]
        assert torch.equal(loaded, value) if isinstance(value, Tensor) else loaded == value, key
    for g in gs[3:]:
        assert torch.equal(_feed(first, g), _feed(second, g))


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_a_state_of_another_wrapped_weighting_is_refused(name: str) -> None:
    # Amortized(UPGrad)'s cached weights loaded silently into Amortized(MGDA) and were used as
    # MGDA's until the next refresh.
    wrap = WRAPPERS[name]
    first = wrap(A.UPGrad())
    _feed(first, torch.eye(3))
    state = first.state_dict()
    wrap(A.UPGrad()).load_state_dict(state)
    with pytest.raises(ValueError, match=rf"saved from {name}\(UPGrad\), this is {name}\(MGDA\)"):
        wrap(A.MGDA()).load_state_dict(state)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_a_state_saved_without_the_type_record_still_loads(name: str) -> None:
    # States saved before the wrapped type was recorded (0.2) have no "_extra_state".
    first = WRAPPERS[name](A.PCD())
    for g in (torch.eye(3), 2 * torch.eye(3)):
        _feed(first, g)
    state = {k: v for k, v in first.state_dict().items() if not k.endswith("_extra_state")}
    second = WRAPPERS[name](A.PCD())
    second.load_state_dict(state)  # strict: no missing key
    assert torch.equal(second.aggregator.sq_norm_ema, first.aggregator.sq_norm_ema)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_refuses_a_jacobian_aggregator(name: str) -> None:
    with pytest.raises(TypeError, match="Jacobian"):
        WRAPPERS[name](A.ConFIG())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_delegates_diagnostics_and_reset(name: str) -> None:
    g = torch.tensor([[2.0, -1.0], [-1.0, 1.0]])
    inner = A.UPGrad()
    wrapped = WRAPPERS[name](inner)
    _feed(wrapped, g)
    assert wrapped.diagnostics is inner.diagnostics
    assert int(wrapped.diagnostics.calls) == 1
    with pytest.raises(AttributeError, match="diagnostics"):
        _ = WRAPPERS[name](A.Mean()).diagnostics
    stateful = WRAPPERS[name](A.PCD())
    gs = [j @ j.T for j in sequence(random_jacobian(4, 9, seed=53), 4, seed=54)]
    for x in gs[:3]:
        _feed(stateful, x)
    stateful.reset()
    assert isinstance(stateful.aggregator, A.PCD)
    assert stateful.aggregator.sq_norm_ema.numel() == 0
    fresh = WRAPPERS[name](A.PCD())  # after reset: the wrapper's own state restarts too
    for x in gs:
        assert torch.equal(_feed(stateful, x), _feed(fresh, x))


class _Doubled(A.GramianWeighting):
    """A weighting whose public ``weights`` differs from its ``_weights``: only the public one is
    the answer a wrapper may use."""

    def _weights(self, gramian: Tensor, /) -> Tensor:
        return torch.ones(gramian.shape[0], dtype=gramian.dtype)

    def weights(self, gramian: Tensor, /) -> Tensor:
        return 2 * super().weights(gramian)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_calls_the_wrapped_public_weights(name: str) -> None:
    w = _feed(WRAPPERS[name](_Doubled()), torch.eye(3))
    assert torch.equal(w, torch.full((3,), 2.0))
