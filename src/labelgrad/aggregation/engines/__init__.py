"""The engines of :func:`labelgrad.aggregate_backward`, one per module, behind one protocol.

:data:`ENGINES` lists them in ``engine="auto"``'s order of preference; :func:`choose` asks each
whether it applies (a :class:`~labelgrad.aggregation.engines.base.Verdict`) and takes the first
that does, among those of the asked name. Adding an engine: one module with a class implementing
:class:`~labelgrad.aggregation.engines.base.Engine`, and its place in :data:`ENGINES`.

Modules: :mod:`.base` (the protocol, :class:`Options`, :class:`Call`, :class:`Verdict`),
:mod:`.closed_form` and :mod:`.representation` (the representation engine, closed form and
batched), :mod:`.subset`, :mod:`.sample_gramian`, :mod:`.exact`, :mod:`.amortized` (cached
weights of ``Amortized`` between recomputations).
"""

from __future__ import annotations

from labelgrad.aggregation.engines.amortized import CachedWeights
from labelgrad.aggregation.engines.base import (
    ENGINE_NAMES,
    Call,
    Engine,
    EngineName,
    Options,
    Prepared,
    Verdict,
)
from labelgrad.aggregation.engines.closed_form import ClosedFormRepresentation
from labelgrad.aggregation.engines.exact import Exact
from labelgrad.aggregation.engines.representation import BatchedRepresentation
from labelgrad.aggregation.engines.sample_gramian import SampleGramian
from labelgrad.aggregation.engines.subset import Subset

__all__ = [
    "CACHED",
    "ENGINES",
    "ENGINE_NAMES",
    "Call",
    "Choice",
    "Engine",
    "EngineName",
    "Options",
    "Prepared",
    "Verdict",
    "choose",
]

ENGINES: tuple[Engine, ...] = (
    ClosedFormRepresentation(),
    BatchedRepresentation(),
    Subset(),
    SampleGramian(),
    Exact(),
)
CACHED: Engine = CachedWeights()


class Choice:
    """The engine chosen for a call, its verdict, and the verdicts of those passed over."""

    __slots__ = ("engine", "passed_over", "verdict")

    def __init__(self, engine: Engine, verdict: Verdict, passed_over: list[Verdict]) -> None:
        self.engine = engine
        self.verdict = verdict
        self.passed_over = passed_over

    @property
    def reason(self) -> str:
        """The chosen engine's sentence, with why the preferred ones were passed over."""
        notes = "".join(f" ({v.detail})" for v in self.passed_over if v.asked)
        return self.verdict.detail + notes


def choose(call: Call) -> Choice:
    """The first engine of the asked name (any for ``auto``) that applies; ValueError if none."""
    asked = call.options.engine
    passed_over: list[Verdict] = []
    for engine in ENGINES:
        if asked not in ("auto", engine.name):
            continue
        verdict = engine.applies(call)
        if verdict.ok:
            return Choice(engine, verdict, passed_over)
        passed_over.append(verdict)
    first = next((v for v in passed_over if v.asked), passed_over[0])
    if first.detail.startswith("engine="):
        raise ValueError(first.detail)
    raise ValueError(f"engine={asked!r} cannot run here: {first.detail}")
