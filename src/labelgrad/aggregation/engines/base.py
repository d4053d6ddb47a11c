"""The engine protocol: what one call asks for, whether an engine applies, and why.

An engine turns a call (:class:`Call`: the K losses, the shared parameters, the aggregator and
the :class:`Options`) into a K x K Gramian and then into a weighted backward. Each engine lives in
its own module of :mod:`labelgrad.aggregation.engines` and implements :class:`Engine`:

- ``applies(call) -> Verdict``: whether it computes the right Gramian for this call; the
  :class:`Verdict` carries a machine-readable ``code`` (never parse ``detail``) and a sentence
  for :func:`labelgrad.explain_engine`;
- ``gramian(call) -> Prepared``: the Gramian (and whatever the backward needs);
- ``backward(call, prepared, weights)``: write the gradients (shared parameters: the gradient of
  ``sum_k w_k L_k``; every other leaf: the plain gradient of ``losses.sum()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from torch import Tensor, nn

from labelgrad.aggregation.losses import LossStructure
from labelgrad.aggregators.base import JacobianAggregator

__all__ = ["Call", "Engine", "EngineName", "Options", "Prepared", "Verdict"]

EngineName = Literal["auto", "exact", "representation", "subset", "sample_gramian"]
ENGINE_NAMES: tuple[str, ...] = ("auto", "exact", "representation", "subset", "sample_gramian")


@dataclass(frozen=True)
class Options:
    """The keyword options of :func:`labelgrad.aggregate_backward`, validated once.

    Attributes:
        engine: the engine asked for (``"auto"`` lets the engines decide).
        features: the shared representation (representation engines).
        head: the ``nn.Linear`` from ``features`` to the logits (closed-form representation).
        subset: parameters to compute G over (subset engine).
        chunk_size: rows per batched per-label backward (None: from ``memory_budget``).
        memory_budget: bytes the per-label gradients may hold at once.
        batched: vmap only (True), loop only (False), vmap with loop fallback (None).
        nonfinite: ``"raise"`` or ``"propagate"``.
        tracker: the :class:`labelgrad.aggregation.Tracker` of ``shared`` (sample-Gramian).
        structure: the :class:`labelgrad.aggregation.LossStructure` of the losses, when given
            or found on their graph; ``structure_note`` says why not otherwise.
    """

    engine: str = "auto"
    features: Tensor | None = None
    head: nn.Module | None = None
    subset: tuple[Tensor, ...] | None = None
    chunk_size: int | None = None
    memory_budget: int = 1 << 30
    batched: bool | None = None
    nonfinite: Literal["raise", "propagate"] = "raise"
    tracker: Any = None
    structure: LossStructure | None = None
    structure_note: str = ""


@dataclass(frozen=True, eq=False)
class Call:
    """One call of :func:`labelgrad.aggregate_backward` (or :func:`labelgrad.explain_engine`).

    Attributes:
        losses: the (K,) losses.
        shared: ``shared`` as passed (a Module, an iterable, or None for ``explain_engine``).
        params: the shared parameters as a list (empty for ``explain_engine``).
        aggregator: the aggregator (a weighting, a Jacobian aggregator, or ``Amortized``).
        options: the :class:`Options`.
    """

    losses: Tensor
    shared: object
    params: list[Tensor]
    aggregator: Any
    options: Options

    @property
    def needs_jacobian(self) -> bool:
        """Whether the aggregator aggregates the Jacobian itself (ConFIG, GradDrop)."""
        return isinstance(self.aggregator, JacobianAggregator)


@dataclass(frozen=True)
class Verdict:
    """Whether an engine applies to a call, as a code and a sentence.

    Attributes:
        engine: the engine's name (what :class:`labelgrad.aggregation.AggregationResult` reports).
        ok: True when the engine computes the right Gramian for the call.
        code: a short identifier of the case (branch on this, never on ``detail``).
        detail: one sentence for people (what :func:`labelgrad.explain_engine` says).
        asked: False when the call did not ask for this engine at all (e.g. no ``features=``),
            so ``auto`` does not mention it when it picks another engine.
    """

    engine: str
    ok: bool
    code: str
    detail: str
    asked: bool = True

    def __str__(self) -> str:
        return self.detail


@dataclass(eq=False)
class Prepared:
    """What an engine's ``gramian`` step hands to its ``backward`` step.

    Attributes:
        gramian: the K x K Gramian (None where the engine reuses weights or aggregates J).
        state: engine-specific data (e.g. the stored Jacobian).
    """

    gramian: Tensor | None
    state: Any = None


class Engine(Protocol):
    """One way to compute the Gramian of the K label gradients and apply the weights.

    Adding an engine is one new module with a class implementing this protocol, listed in
    :data:`labelgrad.aggregation.engines.ENGINES` at its place in ``auto``'s preference order.
    """

    name: ClassVar[str]

    def applies(self, call: Call) -> Verdict:
        """Whether this engine computes the right Gramian for ``call``, and why (not)."""
        ...

    def gramian(self, call: Call) -> Prepared:
        """The Gramian, plus what ``backward`` needs."""
        ...

    def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
        """Write the gradients: ``sum_k w_k grad L_k`` on the shared parameters."""
        ...
