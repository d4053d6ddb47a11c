"""From a Gramian to checked weights: the aggregator's answer under the ``nonfinite`` policy.

On the CPU reading a flag back is free, so a non-finite Gramian or non-finite weights raise
(``nonfinite="raise"``, naming the aggregator) or pass through (``"propagate"``: the non-finite
gradient reaches ``.grad`` and a ``GradScaler`` skips the step). On an accelerator the decision
stays on the device (no host sync per step): a non-finite Gramian selects plain weights (w = 1),
and non-finite weights propagate.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import JacobianAggregator, WeightingWrapper
from labelgrad.aggregators.registry import available

__all__ = ["aggregator_name", "all_finite", "check_aggregator", "check_weights", "weigh"]


def all_finite(t: Tensor) -> bool:
    """Whether every entry of the CPU tensor ``t`` is finite (reads one number back).

    The sum of finite numbers is finite unless it overflows, and an inf or NaN entry makes the
    sum inf or NaN: one reduction and one read decide almost always; the entrywise check runs
    only when the sum is not finite (an overflowing sum of finite entries stays accepted).
    ``isfinite(t).all()`` costs five operators and a read on every call.
    """
    if t.numel() == 0 or math.isfinite(t.sum().item()):
        return True
    return bool(torch.isfinite(t).all())


def aggregator_name(aggregator: object) -> str:
    """``UPGrad``, or ``Amortized(UPGrad)`` for a wrapped one (for error messages)."""
    name = type(aggregator).__name__
    if isinstance(aggregator, WeightingWrapper):
        return f"{name}({type(aggregator.aggregator).__name__})"
    return name


def check_aggregator(aggregator: object) -> None:
    """TypeError (one line, naming ``aggregator``) unless it is an aggregator instance."""
    example = "e.g. lg.aggregators.UPGrad()"
    if aggregator is None:
        raise TypeError(f"aggregator must be an aggregator instance ({example}), got None")
    if inspect.isclass(aggregator):
        raise TypeError(
            f"aggregator must be an instance, got the class {aggregator.__name__}: pass "
            f"{aggregator.__name__}()"
        )
    if isinstance(aggregator, str):
        raise TypeError(
            f"aggregator must be an instance ({example}), not the name {aggregator!r}; "
            f"lg.aggregators has: {', '.join(available())}"
        )
    method = "aggregate" if isinstance(aggregator, JacobianAggregator) else "weights"
    if not callable(getattr(aggregator, method, None)):
        hint = ""
        if callable(getattr(aggregator, "aggregate", None)):
            hint = "; a Jacobian aggregator must subclass lg.aggregators.JacobianAggregator"
        raise TypeError(
            f"aggregator must have a {method}() method ({example}), got "
            f"{type(aggregator).__name__}{hint}"
        )


def check_weights(aggregator: object, w: object, k: int, nonfinite: str) -> Tensor:
    """``w`` as the (K,) weights: shape checked; non-finite on the CPU per ``nonfinite``."""
    if not isinstance(w, Tensor) or w.shape != (k,):
        raise ValueError(
            f"{aggregator_name(aggregator)}.weights(G) must return a ({k},) tensor, got "
            f"{getattr(w, 'shape', type(w).__name__)}"
        )
    if nonfinite == "raise" and w.device.type == "cpu" and not all_finite(w):
        raise ValueError(
            f"{aggregator_name(aggregator)} gave non-finite weights {w.tolist()[:8]} (e.g. a "
            "solver that did not converge); pass nonfinite='propagate' to write the non-finite "
            "gradient instead (GradScaler then skips the step)"
        )
    return w


def weigh(aggregator: Any, g: Tensor, nonfinite: str) -> Tensor:
    """The aggregator's (K,) weights for the Gramian ``g``, under the ``nonfinite`` policy."""
    k = g.shape[0]
    if g.device.type != "cpu":
        # The weighting sees a finite G; a non-finite G selects plain weights, so that the
        # non-finite gradient reaches .grad and a GradScaler skips the step (no host sync).
        finite = torch.isfinite(g).all()
        safe = torch.where(torch.isfinite(g), g, torch.zeros((), dtype=g.dtype, device=g.device))
        w = check_weights(aggregator, aggregator.weights(safe), k, nonfinite)
        return torch.where(finite, w, torch.ones_like(w))
    if not all_finite(g):
        if nonfinite == "propagate":
            return torch.ones(k, dtype=g.dtype, device=g.device)
        raise ValueError(
            "the Gramian of the label gradients is not finite (inf/NaN in some label's "
            "gradient, or gradients so large that G = J J^T overflows its dtype: a diverged "
            "model or a half-precision overflow); pass "
            "nonfinite='propagate' to write the non-finite plain gradient instead "
            "(GradScaler then skips the step)"
        )
    return check_weights(aggregator, aggregator.weights(g), k, nonfinite)
