"""The engine protocol: what one call asks for, whether an engine applies, and why.

An engine turns a call (:class:`Call`: the K losses, the shared parameters, the aggregator and
the :class:`Options`) into a K x K Gramian and then into a weighted backward. Each engine lives in
its own module of :mod:`labelgrad.aggregation.engines` and implements :class:`Engine`:

- ``applies(call) -> Verdict``: whether it computes the right Gramian for this call; the
  :class:`Verdict` carries a machine-readable ``code`` (never parse ``detail``) and a sentence
  for :func:`labelgrad.explain_engine`;
- ``gramian(call) -> Prepared``: the Gramian, or weights known without one (cached), in a
  :class:`Prepared` record; an engine whose backward needs more subclasses :class:`Prepared`
  with typed fields and reads it back with :func:`own`;
- ``backward(call, prepared, weights)``: write the gradients (shared parameters: the gradient of
  ``sum_k w_k L_k``; every other leaf: the plain gradient of ``losses.sum()``).

The engine names have one source, :data:`GramianEngineName`: ``engine=`` takes those or
``"auto"`` (:data:`EngineName`), and :data:`RegisteredEngineName` adds ``"cached"``, the engine
that reuses the weights of :class:`labelgrad.aggregation.Amortized` between recomputations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar, get_args

from torch import Tensor, nn

from labelgrad.aggregation.losses import LossStructure
from labelgrad.aggregators.aggregator_types import JacobianAggregator

__all__ = [
    "ENGINE_NAMES",
    "NEEDS_ARGUMENT",
    "REGISTERED_NAMES",
    "Call",
    "Engine",
    "EngineName",
    "GramianEngineName",
    "Options",
    "Prepared",
    "RegisteredEngineName",
    "Verdict",
    "own",
]

GramianEngineName = Literal["exact", "representation", "subset", "sample_gramian"]
"""The engines that compute a Gramian; each can be asked for by name."""
EngineName = Literal["auto", GramianEngineName]
"""What ``engine=`` accepts: a Gramian engine, or ``"auto"`` (the engines decide)."""
RegisteredEngineName = Literal[GramianEngineName, "cached"]
"""The name of every engine in :data:`labelgrad.aggregation.engines.ENGINES` (what
:attr:`labelgrad.aggregation.AggregationResult.engine` reports)."""
ENGINE_NAMES: tuple[str, ...] = get_args(EngineName)
REGISTERED_NAMES: tuple[str, ...] = get_args(RegisteredEngineName)
NEEDS_ARGUMENT: frozenset[str] = frozenset({"no_features", "no_subset"})
"""Refusal codes of a call that lacks an argument the asked engine needs: their ``detail`` is
the whole error message (it names the argument), not a reason to append."""


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

    An engine that needs more in its backward (a stored Jacobian, per-layer activations)
    subclasses this with typed fields (``@dataclass(eq=False, kw_only=True)``) and reads its
    record back with :func:`own`.

    Attributes:
        gramian: the K x K Gramian (None where the engine reuses weights or aggregates J).
        weights: the (K,) weights when they are known without a Gramian (the cached engine);
            None: ``aggregate_backward`` computes them from ``gramian``.

    Example:
        >>> import torch
        >>> from labelgrad.aggregation.engines import Prepared
        >>> Prepared(torch.eye(2)).weights is None
        True
    """

    gramian: Tensor | None
    weights: Tensor | None = None


P = TypeVar("P", bound=Prepared)


def own(prepared: Prepared, kind: type[P]) -> P:
    """``prepared`` as the engine's own record ``kind`` (what its ``gramian`` step returned).

    Raises:
        TypeError: ``prepared`` is another engine's record (a bug in the caller).

    Example:
        >>> import torch
        >>> from labelgrad.aggregation.engines import Prepared, own
        >>> own(Prepared(None), Prepared).gramian is None
        True
    """
    if not isinstance(prepared, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(prepared).__name__}")
    return prepared


class Engine(Protocol):
    """One way to compute the Gramian of the K label gradients and apply the weights.

    Adding an engine is one new module with a class implementing this protocol, listed in
    :data:`labelgrad.aggregation.engines.ENGINES` at its place in ``auto``'s preference order
    (and its name in :data:`GramianEngineName` when callers may ask for it by name).

    Attributes:
        name: the engine's name (what ``engine=`` asks for, and what the result reports).
        reuses_weights: True for an engine that applies weights an earlier step computed (no
            Gramian on this step). It is never asked for by name: ``choose`` consults it after
            choosing the engine that computes the Gramian when the weights are due, whatever
            ``engine=`` says.
    """

    name: ClassVar[str]
    reuses_weights: ClassVar[bool]

    def applies(self, call: Call) -> Verdict:
        """Whether this engine computes the right Gramian for ``call``, and why (not)."""
        ...

    def gramian(self, call: Call) -> Prepared:
        """The Gramian (or known weights), plus what ``backward`` needs."""
        ...

    def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
        """Write the gradients: ``sum_k w_k grad L_k`` on the shared parameters."""
        ...
