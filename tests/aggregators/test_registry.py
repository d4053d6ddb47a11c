"""The aggregator types and the registry: ``isinstance`` tells a Gramian weighting from a Jacobian
aggregator, and ``lg.aggregators.available()`` lists exactly the public aggregator classes.

Parametrized over ``lg.aggregators.__all__`` and over ``available()``, so that a new aggregator is
covered (and one missing from either is caught) without editing this file.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import labelgrad as lg
from labelgrad.aggregation.weighing import check_aggregator

A = lg.aggregators
BASES = (A.GramianWeighting, A.JacobianAggregator, A.WeightingWrapper)


def _is_public_aggregator_class(name: str) -> bool:
    obj = getattr(A, name)
    return (
        inspect.isclass(obj)
        and issubclass(obj, (A.GramianWeighting, A.JacobianAggregator))
        and obj not in BASES
    )


EXPORTED = sorted(name for name in A.__all__ if _is_public_aggregator_class(name))


def test_available_is_sorted_and_fresh() -> None:
    names = A.available()
    assert list(names) == sorted(names)
    names.clear()  # the caller's copy: the registry is unchanged
    assert "UPGrad" in A.available()


@pytest.mark.parametrize("name", A.__all__)
def test_every_exported_aggregator_class_is_available(name: str) -> None:
    assert (name in A.available()) == _is_public_aggregator_class(name)


@pytest.mark.parametrize("name", sorted(A.available()))
def test_every_available_name_is_exported_and_its_class(name: str) -> None:
    assert name in A.__all__
    assert A.available()[name] is getattr(A, name)
    assert name in EXPORTED


@pytest.mark.parametrize("name", sorted(A.available()))
def test_isinstance_tells_the_two_types_apart(name: str) -> None:
    agg = A.available()[name]()  # every aggregator constructs with no arguments
    gramian = isinstance(agg, A.GramianWeighting)
    assert gramian != isinstance(agg, A.JacobianAggregator)
    assert isinstance(agg, A.Aggregator)
    j = torch.tensor([[1.0, 0.0, 2.0], [-0.5, 1.0, 0.0], [0.3, 0.2, 1.0], [1.0, 1.0, 1.0]])
    if gramian:
        assert agg.weights(j @ j.T).shape == (4,)
        assert not hasattr(agg, "aggregate")
    else:
        assert agg.aggregate(j).shape == (3,)
        assert not hasattr(agg, "weights")


def test_the_union_is_one_public_name() -> None:
    assert lg.aggregation.Aggregator is A.Aggregator
    assert not isinstance(object(), A.Aggregator)
    with pytest.raises(TypeError):
        type("Sub", (A.Aggregator,), {})  # an alias, not a base: subclass one of the two types


def test_the_library_lists_the_registry() -> None:
    with pytest.raises(TypeError) as info:
        check_aggregator("UPGrad")
    listed = str(info.value).split("lg.aggregators has: ")[1].split(", ")
    assert listed == list(A.available())


def test_a_duck_typed_jacobian_aggregator_is_told_to_subclass() -> None:
    class Duck:
        def aggregate(self, jacobian: torch.Tensor, /) -> torch.Tensor:
            return jacobian.sum(0)

    with pytest.raises(TypeError, match=r"subclass lg\.aggregators\.JacobianAggregator"):
        check_aggregator(Duck())
