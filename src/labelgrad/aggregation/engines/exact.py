"""The exact engine: G over the shared parameters from batched per-label VJPs.

J (K, P) is stored when it fits in ``memory_budget`` (half of it, the rest for the rows in
flight), so the update ``J^T w`` needs no second backward through the shared part. When it does
not fit, G is formed block pair by block pair (``per_label_jacobian.blocked_gramian``: more
backward rows, for memory that does not grow with K x P) and the update is one weighted
backward.
Jacobian aggregators (ConFIG, GradDrop) always get the stored J.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from labelgrad.aggregation import _write
from labelgrad.aggregation.engines._shared import check_reached, checked_jacobian, rows_per_chunk
from labelgrad.aggregation.engines.protocol import Call, Prepared, Verdict, own
from labelgrad.aggregation.per_label_jacobian import (
    backward_row_bytes,
    blocked_gramian,
    gramian_of,
    row_bytes,
)
from labelgrad.aggregation.weighing import aggregator_name, all_finite

__all__ = ["Exact", "ExactPrepared"]


@dataclass(eq=False, kw_only=True)
class ExactPrepared(Prepared):
    """The exact engine's record.

    Attributes:
        jacobian: the stored J, one (K, *shape) tensor per shared parameter; None when G was
            formed block by block (the update is then one weighted backward).
    """

    jacobian: list[Tensor] | None = None


class Exact:
    """Batched per-label VJPs over the shared parameters (always applies)."""

    name: ClassVar[str] = "exact"
    reuses_weights: ClassVar[bool] = False

    def applies(self, call: Call) -> Verdict:
        if call.needs_jacobian:
            detail = (
                f"{aggregator_name(call.aggregator)} needs the full Jacobian: exact engine "
                "(J stored)"
            )
            return Verdict(self.name, True, "needs_jacobian", detail)
        detail = "exact engine: batched per-label VJPs over the shared parameters"
        return Verdict(self.name, True, "batched_vjp", detail)

    def gramian(self, call: Call) -> Prepared:
        k, params = call.losses.numel(), call.params
        per_row = row_bytes(params)
        if call.needs_jacobian or 2 * k * per_row <= call.options.memory_budget:
            rows = rows_per_chunk(k, per_row, call, held=k * per_row, inputs=params)
            jac = checked_jacobian(call, params, "shared", rows)
            return ExactPrepared(None if call.needs_jacobian else gramian_of(jac), jacobian=jac)
        anchor, rows = _blocked_plan(call, per_row)
        g, reached = blocked_gramian(
            call.losses, params, anchor_rows=anchor, chunk_size=rows, batched=call.options.batched
        )
        missing = [p for p, ok in zip(params, reached) if not ok]
        check_reached(missing, params, "shared")
        return ExactPrepared(g)

    def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
        jac = own(prepared, ExactPrepared).jacobian
        if jac is None:
            assert weights is not None
            _write.weighted_backward(call.losses, call.params, weights)
            return
        if weights is None:
            updates = _jacobian_update(call, jac)
        else:
            updates = [torch.tensordot(weights.to(j.dtype), j, dims=1) for j in jac]
        _write.plain_backward_with_updates(call.losses, call.params, updates)


def _blocked_plan(call: Call, per_row: int) -> tuple[int, int]:
    """(anchor rows, streamed rows per backward) for a Gramian formed within the budget.

    What is left after G (K^2) goes half to the anchor block; a quarter to each streamed
    backward, whose rows hold the parameter gradients plus about as much again in flight, plus
    gradients of the logits' shape (N x C per row, several of them in the loss's backward).
    """
    k = call.losses.numel()
    g_bytes = k * k * max(4, call.losses.element_size())
    left = max(call.options.memory_budget - g_bytes, call.options.memory_budget // 4)
    structure = call.options.structure
    logit_row = 0 if structure is None else structure.logits.numel() * 4
    # The graph's intermediates (one gradient of each per row) where they outweigh the logits'.
    intermediates = backward_row_bytes(call.losses, call.params)
    in_flight = 2 * per_row + max(4 * logit_row, intermediates)
    anchor = max(1, left // (2 * per_row))
    rows = call.options.chunk_size or max(1, left // (4 * in_flight))
    return anchor, rows


def _jacobian_update(call: Call, jac: list[Tensor]) -> list[Tensor]:
    k = call.losses.numel()
    flat = torch.cat([j.reshape(k, -1) for j in jac], dim=1)
    # Checked where that is free (CPU); elsewhere the non-finite update reaches .grad.
    if call.options.nonfinite == "raise" and flat.device.type == "cpu" and not all_finite(flat):
        raise ValueError("the Jacobian of the label losses is not finite (inf/NaN)")
    update = call.aggregator.aggregate(flat)
    if not isinstance(update, Tensor) or update.shape != (flat.shape[1],):
        raise ValueError(
            f"{aggregator_name(call.aggregator)}.aggregate(J) must return a "
            f"({flat.shape[1]},) tensor"
        )
    if call.options.nonfinite == "raise" and update.device.type == "cpu" and not all_finite(update):
        raise ValueError(f"{aggregator_name(call.aggregator)} gave a non-finite update")
    sizes = [p.numel() for p in call.params]
    return [u.reshape(p.shape) for u, p in zip(update.split(sizes), call.params)]
