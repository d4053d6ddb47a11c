"""The subset engine: the exact Gramian over a subset of the shared parameters.

G is computed over ``subset=`` (e.g. the last block of the trunk); the weights then apply to all
shared parameters with one weighted backward. Shared parameters the losses do not reach are an
error, as in the exact engine.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from labelgrad.aggregation import _graph, _write
from labelgrad.aggregation.engines._shared import (
    check_reached,
    checked_jacobian,
    jacobian_refusal,
    rows_per_chunk,
)
from labelgrad.aggregation.engines.protocol import Call, Prepared, Verdict
from labelgrad.aggregation.per_label_jacobian import gramian_of, row_bytes

__all__ = ["Subset"]


class Subset:
    """Exact G over ``subset=``, one weighted backward over all shared parameters."""

    name: ClassVar[str] = "subset"
    reuses_weights: ClassVar[bool] = False

    def applies(self, call: Call) -> Verdict:
        asked = call.options.engine == "subset"
        if call.options.subset is None:
            detail = "engine='subset' needs subset= (the parameters to compute G over)"
            return Verdict(self.name, False, "no_subset", detail, asked=asked)
        refusal = jacobian_refusal(self.name, call, asked)
        if refusal is not None:
            return refusal
        detail = "subset engine: exact Gramian over the parameter subset, one weighted backward"
        return Verdict(self.name, True, "subset", detail)

    def gramian(self, call: Call) -> Prepared:
        sub = call.options.subset
        assert sub is not None
        ids = {id(p) for p in call.params}
        if any(id(p) not in ids for p in sub):
            raise ValueError("subset must contain only parameters that are also in shared")
        # As the exact engine: a shared parameter the losses miss is an error, not a silent 0.
        reached = {id(leaf) for leaf in _graph.leaves_reached(call.losses)}
        check_reached([p for p in call.params if id(p) not in reached], call.params, "shared")
        k = call.losses.numel()
        per_row = row_bytes(sub)
        jac = checked_jacobian(call, sub, "subset", rows_per_chunk(k, per_row, call, inputs=sub))
        return Prepared(gramian_of(jac), None)

    def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
        assert weights is not None
        _write.weighted_backward(call.losses, call.params, weights)
