"""Cached weights of :class:`labelgrad.aggregation.Amortized`: no Gramian on this step.

Between recomputations the shared parameters get the gradient of ``sum_k w_k L_k`` with the
cached ``w`` (one weighted backward), whatever engine computes the Gramian on the other steps.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from labelgrad.aggregation import _write
from labelgrad.aggregation.amortized import Amortized
from labelgrad.aggregation.engines.base import Call, Prepared, Verdict
from labelgrad.aggregation.weighing import check_weights

__all__ = ["CachedWeights"]


class CachedWeights:
    """Applies when the aggregator is ``Amortized`` and its weights are not due this step."""

    name: ClassVar[str] = "amortized"

    def applies(self, call: Call) -> Verdict:
        agg = call.aggregator
        if not isinstance(agg, Amortized):
            return Verdict(self.name, False, "not_amortized", "not Amortized", asked=False)
        if agg.due(call.losses.numel()):
            return Verdict(self.name, False, "due", "Amortized weights due this step")
        return Verdict(self.name, True, "cached", "cached weights (Amortized)")

    def gramian(self, call: Call) -> Prepared:
        k = call.losses.numel()
        w = call.aggregator.cached(k, call.losses)
        return Prepared(None, check_weights(call.aggregator, w, k, call.options.nonfinite))

    def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
        assert weights is not None
        _write.weighted_backward(call.losses, call.params, weights)
