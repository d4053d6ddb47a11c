"""The cached engine: the weights of :class:`labelgrad.aggregation.Amortized` between
recomputations, with no Gramian on this step.

The shared parameters get the gradient of ``sum_k w_k L_k`` with the cached ``w`` (one weighted
backward), whatever engine computes the Gramian on the steps where the weights are due. The
result of such a step names this engine (``"cached"``), and its reason names the engine that
computes the Gramian when the weights are due.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from labelgrad.aggregation import _write
from labelgrad.aggregation.amortized import Amortized
from labelgrad.aggregation.engines.protocol import Call, Prepared, Verdict
from labelgrad.aggregation.weighing import all_finite, check_weights

__all__ = ["CachedWeights"]

_NONFINITE = "inf/NaN in some label's loss or gradient, e.g. a NaN input or a diverged model"
_HINT = (
    "pass nonfinite='propagate' to write the non-finite gradient instead (GradScaler then "
    "skips the step)"
)


class CachedWeights:
    """Applies when the aggregator is ``Amortized`` and its weights are not due this step."""

    name: ClassVar[str] = "cached"
    reuses_weights: ClassVar[bool] = True

    def applies(self, call: Call) -> Verdict:
        agg = call.aggregator
        if not isinstance(agg, Amortized):
            return Verdict(self.name, False, "not_amortized", "not Amortized", asked=False)
        if agg.due(call.losses.numel()):
            return Verdict(self.name, False, "due", "Amortized weights due this step")
        return Verdict(self.name, True, "cached", "cached weights (Amortized)")

    def gramian(self, call: Call) -> Prepared:
        agg = call.aggregator
        assert isinstance(agg, Amortized)
        k = call.losses.numel()
        w = check_weights(agg, agg.cached(k, call.losses), k, call.options.nonfinite)
        return Prepared(None, weights=w)

    def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
        assert weights is not None
        # No Gramian on this step, so nothing else sees a non-finite label gradient: with
        # nonfinite="raise" (on CPU, where reading a flag is free) the losses are checked before
        # the backward and the shared parameters' gradients after it (the same backward as on
        # other steps, so parameter hooks such as DDP's fire as usual).
        check = call.options.nonfinite == "raise" and call.losses.device.type == "cpu"
        if check and not all_finite(call.losses.detach()):
            raise ValueError(
                f"the label losses are not finite ({_NONFINITE}); nothing was written; {_HINT}"
            )
        _write.weighted_backward(call.losses, call.params, weights)
        if check and not all(p.grad is None or all_finite(p.grad) for p in call.params):
            raise ValueError(
                "the gradient of the shared parameters is not finite after a step that reused "
                f"Amortized's cached weights ({_NONFINITE}); {_HINT}"
            )
