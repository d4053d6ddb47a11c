"""Helpers several engines share: chunking within the memory budget, the stored Jacobian with
its unreached-parameter check, and the refusal of Jacobian aggregators.

One copy each, so that every engine that stores per-label gradients honours ``chunk_size`` and
``memory_budget`` the same way and says the same thing about parameters the losses miss.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from labelgrad.aggregation.engines.protocol import Call, Verdict
from labelgrad.aggregation.per_label_jacobian import backward_row_bytes, exact_jacobian
from labelgrad.aggregation.weighing import aggregator_name

__all__ = ["check_reached", "checked_jacobian", "jacobian_refusal", "rows_per_chunk"]


def rows_per_chunk(
    k: int, per_row: int, call: Call, held: int = 0, inputs: Sequence[Tensor] = ()
) -> int:
    """Rows per batched backward: ``chunk_size``, or what the budget leaves after ``held`` bytes.

    A batched backward holds its per-row gradients plus about as much again in flight, and in
    every row a gradient of each intermediate tensor between the losses and ``inputs``
    (:func:`~labelgrad.aggregation.per_label_jacobian.backward_row_bytes`: the N x C logit
    gradients of a large head, which a tiny trunk's parameters do not reveal).
    """
    if call.options.chunk_size is not None:
        return call.options.chunk_size
    free = max(0, call.options.memory_budget - held)
    # Twice the intermediates: each one's gradient plus the backward's temporaries of its size.
    in_flight = 2 * backward_row_bytes(call.losses, inputs) if inputs else 0
    return max(1, min(k, free // max(1, 2 * per_row + in_flight)))


def checked_jacobian(
    call: Call,
    inputs: Sequence[Tensor],
    what: str,
    rows: int,
    among: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """The stored Jacobian over ``inputs``; ValueError naming those the losses do not reach.

    ``among``: the list the error's indices refer to (default ``inputs``), e.g. all shared
    parameters when ``inputs`` is the part of them an engine handles this way.
    """
    jac = exact_jacobian(call.losses, inputs, chunk_size=rows, batched=call.options.batched)
    missing = [p for p, j in zip(inputs, jac) if j is None]
    check_reached(missing, inputs if among is None else among, what)
    return [j for j in jac if j is not None]


def check_reached(missing: Sequence[Tensor], among: Sequence[Tensor], what: str) -> None:
    """ValueError naming the ``missing`` parameters (by index in ``among``), if any."""
    if missing:
        ids = {id(p) for p in missing}
        index = [i for i, p in enumerate(among) if id(p) in ids]
        shapes = [tuple(p.shape) for p in missing[:5]]
        raise ValueError(
            f"the losses do not reach {len(missing)} of the {what} parameters (indices "
            f"{index[:5]}, shapes {shapes}): pass only parameters the losses depend on"
        )


def jacobian_refusal(name: str, call: Call, asked: bool) -> Verdict | None:
    """The refusal of a Gramian-only engine for an aggregator that needs the Jacobian."""
    if not call.needs_jacobian:
        return None
    detail = (
        f"{aggregator_name(call.aggregator)} needs the Jacobian over the shared parameters, "
        f"not a Gramian: use engine='exact' (engine={name!r} cannot run it)"
    )
    return Verdict(name, False, "needs_jacobian", detail, asked=asked)
