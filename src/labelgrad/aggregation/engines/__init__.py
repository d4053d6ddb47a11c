"""The engines of :func:`labelgrad.aggregate_backward`, one per module, behind one protocol.

:data:`ENGINES` lists them in ``engine="auto"``'s order of preference; :func:`choose` asks each
whether it applies (a :class:`~labelgrad.aggregation.engines.protocol.Verdict`) and takes the first
that does, among those of the asked name; then an engine that reuses earlier weights (the cached
engine, for :class:`labelgrad.aggregation.Amortized`) takes the step where it applies.

Adding an engine: one module with a class implementing
:class:`~labelgrad.aggregation.engines.protocol.Engine` (its backward state a typed subclass of
:class:`~labelgrad.aggregation.engines.protocol.Prepared`), its place in :data:`ENGINES`, and its
name in :data:`~labelgrad.aggregation.engines.protocol.GramianEngineName` so that ``engine=`` can
ask for it (a test checks that the names and the registry agree).

Modules: :mod:`.base` (the protocol, :class:`Options`, :class:`Call`, :class:`Verdict`,
:class:`Prepared`, the engine names), :mod:`._shared` (helpers several engines use),
:mod:`.closed_form` and :mod:`.representation` (the representation engine, closed form and
batched), :mod:`.subset`, :mod:`.sample_gramian`, :mod:`.exact`, :mod:`.cached` (the weights
of ``Amortized`` between recomputations).
"""

from __future__ import annotations

from labelgrad.aggregation.engines.cached import CachedWeights
from labelgrad.aggregation.engines.closed_form import ClosedFormRepresentation
from labelgrad.aggregation.engines.exact import Exact
from labelgrad.aggregation.engines.protocol import (
    ENGINE_NAMES,
    NEEDS_ARGUMENT,
    REGISTERED_NAMES,
    Call,
    Engine,
    EngineName,
    GramianEngineName,
    Options,
    Prepared,
    RegisteredEngineName,
    Verdict,
    own,
)
from labelgrad.aggregation.engines.representation import BatchedRepresentation
from labelgrad.aggregation.engines.sample_gramian import SampleGramian
from labelgrad.aggregation.engines.subset import Subset

__all__ = [
    "CACHED",
    "ENGINES",
    "ENGINE_NAMES",
    "REGISTERED_NAMES",
    "Call",
    "Choice",
    "Engine",
    "EngineName",
    "GramianEngineName",
    "Options",
    "Prepared",
    "RegisteredEngineName",
    "Verdict",
    "choose",
    "own",
]

CACHED: Engine = CachedWeights()
ENGINES: tuple[Engine, ...] = (
    CACHED,
    ClosedFormRepresentation(),
    BatchedRepresentation(),
    Subset(),
    SampleGramian(),
    Exact(),
)


class Choice:
    """The engine chosen for a call, its verdict, and the verdicts of those passed over.

    ``computing``: for an engine that reuses earlier weights (cached), the choice of the engine
    that computes the Gramian when the weights are due; None otherwise.
    """

    __slots__ = ("computing", "engine", "passed_over", "verdict")

    def __init__(
        self,
        engine: Engine,
        verdict: Verdict,
        passed_over: list[Verdict],
        computing: Choice | None = None,
    ) -> None:
        self.engine = engine
        self.verdict = verdict
        self.passed_over = passed_over
        self.computing = computing

    @property
    def reason(self) -> str:
        """The chosen engine's sentence, with why the preferred ones were passed over."""
        notes = "".join(f" ({v.detail})" for v in self.passed_over if v.asked)
        own_reason = self.verdict.detail + notes
        return own_reason if self.computing is None else f"{self.computing.reason}; {own_reason}"


def choose(call: Call) -> Choice:
    """The engine for ``call``; ValueError if none of the asked name applies.

    First the engine that computes the Gramian: the first of the asked name (any for ``auto``)
    that applies. Then, where one applies, an engine that reuses earlier weights takes the step
    instead (so a call that no Gramian engine can serve fails on every step, cached or not).
    """
    asked = call.options.engine
    passed_over: list[Verdict] = []
    for engine in ENGINES:
        if engine.reuses_weights or asked not in ("auto", engine.name):
            continue
        verdict = engine.applies(call)
        if verdict.ok:
            return _reusing(call, Choice(engine, verdict, passed_over))
        passed_over.append(verdict)
    first = next((v for v in passed_over if v.asked), passed_over[0])
    if first.code in NEEDS_ARGUMENT:
        raise ValueError(first.detail)
    raise ValueError(f"engine={asked!r} cannot run here: {first.detail}")


def _reusing(call: Call, computing: Choice) -> Choice:
    """An engine that reuses earlier weights where one applies, else ``computing``."""
    for engine in ENGINES:
        if engine.reuses_weights:
            verdict = engine.applies(call)
            if verdict.ok:
                return Choice(engine, verdict, [], computing)
    return computing
