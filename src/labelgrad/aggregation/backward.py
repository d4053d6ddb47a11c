"""``aggregate_backward``: K label losses -> Gramian -> weights -> the gradient of the shared part.

The shared parameters receive the aggregated gradient ``J^T w`` (the gradient of
``sum_k w_k L_k``, where ``w = aggregator.weights(J J^T)``); every other parameter the losses
reach receives the plain gradient of ``losses.sum()``. Gradients are *added* to ``.grad``, as
``Tensor.backward`` does, so gradient accumulation works.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from labelgrad.aggregation.amortized import Amortized
from labelgrad.aggregation.engines import ENGINE_NAMES, Call, Choice, Options, choose
from labelgrad.aggregation.engines.protocol import EngineName
from labelgrad.aggregation.losses import LossStructure, find_structure
from labelgrad.aggregation.tracker import Tracker
from labelgrad.aggregation.weighing import check_aggregator, weigh
from labelgrad.aggregators.aggregator_types import (
    Aggregator,  # re-exported: one public aggregator type
)

__all__ = ["AggregationResult", "Aggregator", "aggregate_backward", "explain_engine"]


@dataclass(frozen=True)
class AggregationResult:
    """What :func:`aggregate_backward` did.

    Attributes:
        weights: the (K,) weights applied to the losses on the shared parameters (None for
            Jacobian aggregators such as ConFIG, whose update is not a weighting).
        gramian: the (K, K) Gramian the weights were computed from (None when cached weights
            of :class:`labelgrad.aggregation.Amortized` were reused).
        engine: the engine that ran: ``"cached"`` on the steps where
            :class:`labelgrad.aggregation.Amortized` reused its weights (no Gramian), else the
            engine that computed the Gramian (a name in
            :data:`labelgrad.aggregation.engines.REGISTERED_NAMES`).
        reason: why that engine (what ``explain_engine`` says); on cached steps, the engine
            that computes the Gramian when the weights are due, then
            ``"; cached weights (Amortized)"``.

    Example:
        >>> import torch, labelgrad as lg
        >>> net = torch.nn.Linear(3, 2)
        >>> losses = lg.per_label_losses(net(torch.randn(4, 3)), torch.randint(0, 2, (4, 2)))
        >>> r = lg.aggregate_backward(losses, shared=net, aggregator=lg.aggregators.Mean())
        >>> r.engine, tuple(r.gramian.shape), r.weights.tolist()
        ('exact', (2, 2), [0.5, 0.5])
    """

    weights: Tensor | None
    gramian: Tensor | None
    engine: str
    reason: str


def _as_params(shared: Iterable[Tensor] | nn.Module | Tensor, name: str) -> list[Tensor]:
    params: list[Tensor]
    if isinstance(shared, nn.Module):
        params = [p for p in shared.parameters() if p.requires_grad]
    elif isinstance(shared, Tensor):
        params = [shared]
    else:
        try:
            params = list(shared)
        except TypeError:
            raise TypeError(
                f"{name} must be an nn.Module or an iterable of parameters, "
                f"got {type(shared).__name__}"
            ) from None
    seen: set[int] = set()
    out: list[Tensor] = []
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}[{i}] must be a tensor (parameter), got {type(p).__name__}")
        if not p.requires_grad or p.grad_fn is not None:
            raise ValueError(
                f"{name}[{i}] (shape {tuple(p.shape)}) must be a leaf tensor with "
                "requires_grad=True (a parameter)"
            )
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError(f"{name} is empty: pass the parameters that the labels share")
    return out


def _check_losses(losses: Tensor) -> None:
    if not isinstance(losses, Tensor):
        raise TypeError(f"losses must be a tensor of shape (K,), got {type(losses).__name__}")
    if losses.dim() != 1:
        raise ValueError(
            f"losses must be 1-D (K,) (one loss per label or group, e.g. from "
            f"lg.per_label_losses), got shape {tuple(losses.shape)}"
        )
    if losses.numel() == 0:
        raise ValueError("losses is empty: need at least one label loss (K >= 1)")
    if losses.grad_fn is None:
        raise ValueError("losses are not on an autograd graph (nothing requires grad)")


def _check_choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _positive_int(name: str, value: object, optional: bool) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = "a positive int or None" if optional else "a positive int (bytes)"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _options(
    losses: Tensor,
    engine: object,
    features: object,
    head: object,
    subset: object,
    kw: dict[str, Any],
) -> Options:
    """Validate the keyword arguments once, into the frozen :class:`Options`."""
    if not isinstance(engine, str) or engine not in ENGINE_NAMES:
        raise ValueError(f"engine must be one of {ENGINE_NAMES}, got {engine!r}")
    if features is not None and not isinstance(features, Tensor):
        raise TypeError(f"features must be a tensor or None, got {type(features).__name__}")
    if head is not None and not isinstance(head, nn.Module):
        raise TypeError(f"head must be an nn.Module (the Linear head) or None, got {head!r}")
    _positive_int("chunk_size", kw["chunk_size"], optional=True)
    _positive_int("memory_budget", kw["memory_budget"], optional=False)
    if kw["batched"] not in (None, True, False) or not isinstance(
        kw["batched"], (bool, type(None))
    ):
        raise ValueError(f"batched must be True, False or None, got {kw['batched']!r}")
    if kw["nonfinite"] not in ("raise", "propagate"):
        raise ValueError(f"nonfinite must be 'raise' or 'propagate', got {kw['nonfinite']!r}")
    tracker = kw["tracker"]
    if tracker is not None and not isinstance(tracker, Tracker):
        raise TypeError(
            f"tracker must be the Tracker of lg.aggregation.track(module), got {tracker!r}"
        )
    structure, note = _structure(losses, kw["structure"])
    sub = None if subset is None else tuple(_as_params(subset, "subset"))  # type: ignore[arg-type]
    return Options(
        engine, features, head, sub, kw["chunk_size"], kw["memory_budget"], kw["batched"],
        kw["nonfinite"], tracker, structure, note,
    )  # fmt: skip


def _structure(losses: Tensor, given: object) -> tuple[LossStructure | None, str]:
    if given is None:
        return find_structure(losses)
    if not isinstance(given, LossStructure):
        raise TypeError(
            "structure must be a LossStructure (lg.aggregation.loss_structure(losses)) or None, "
            f"got {type(given).__name__}"
        )
    if given.num_groups != losses.numel():
        raise ValueError(
            f"structure describes {given.num_groups} losses, but losses has {losses.numel()}"
        )
    return given, ""


def explain_engine(
    losses: Tensor,
    shared: Iterable[Tensor] | nn.Module | None = None,
    aggregator: object = None,
    engine: EngineName = "auto",
    features: Tensor | None = None,
    *,
    head: nn.Module | None = None,
    subset: Iterable[Tensor] | None = None,
    tracker: Tracker | None = None,
    structure: LossStructure | None = None,
) -> str:
    """Say which engine :func:`aggregate_backward` would use for these arguments, and why.

    Each engine says whether it applies (and why not); the sentence is the chosen engine's,
    with the reasons the preferred ones were passed over in parentheses. Operations on the
    losses that mix the labels (indexing, a sum with another loss) drop their
    :class:`~labelgrad.aggregation.LossStructure`, and the sentence says so.

    Example:
        >>> import torch, labelgrad as lg
        >>> net = torch.nn.Linear(4, 3)
        >>> losses = lg.per_label_losses(net(torch.randn(5, 4)), torch.randint(0, 2, (5, 3)))
        >>> lg.explain_engine(losses, shared=net.parameters()).split(":")[0]
        'exact engine'
    """
    _check_losses(losses)
    kw = _defaults(tracker=tracker, structure=structure)
    options = _options(losses, engine, features, head, subset, kw)
    return choose(Call(losses, shared, [], aggregator, options)).reason


def _defaults(**given: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "chunk_size": None,
        "memory_budget": 1 << 30,
        "batched": None,
        "nonfinite": "raise",
        "tracker": None,
        "structure": None,
    }
    kw.update(given)
    return kw


def aggregate_backward(
    losses: Tensor,
    shared: Iterable[Tensor] | nn.Module,
    aggregator: Any,
    engine: EngineName = "auto",
    features: Tensor | None = None,
    *,
    head: nn.Module | None = None,
    subset: Iterable[Tensor] | None = None,
    chunk_size: int | None = None,
    memory_budget: int = 1 << 30,
    batched: bool | None = None,
    nonfinite: Literal["raise", "propagate"] = "raise",
    tracker: Tracker | None = None,
    structure: LossStructure | None = None,
) -> AggregationResult:
    """Backward of K label losses with their gradients aggregated on the shared parameters.

    The shared parameters receive ``J^T w`` with ``w = aggregator.weights(G)`` (or
    ``aggregator.aggregate(J)`` for Jacobian aggregators); every other parameter the losses reach
    receives the plain gradient of ``losses.sum()``. Gradients are added to ``.grad``. The graph
    is freed afterwards (as ``losses.sum().backward()`` would).

    Engines (``engine="auto"`` picks the cheapest that is correct; :func:`explain_engine` says
    which and why; each lives in its own module of :mod:`labelgrad.aggregation.engines`):

    - ``"exact"``: G over the shared parameters from batched per-label VJPs (vmap), loop
      fallback where vmap cannot run (``batched``). J (K, P) is stored when it fits in half of
      ``memory_budget`` (the update ``J^T w`` then needs no second backward); otherwise G is
      formed block by block within the budget (more per-label backward rows) and the update is
      one weighted backward.
    - ``"representation"``: G of the per-label gradients at ``features``; the weighted feature
      gradient then flows into everything upstream of ``features`` in one ordinary backward.
      With ``head=`` the Linear head mapping ``features`` to the logits, and losses from
      :func:`labelgrad.per_label_losses` (elementwise operations on them allowed), G has a
      closed form (no per-label backward). For single-label class groups (cross-entropy) this
      Gramian is diagonal by construction (the groups are sample-disjoint at the features):
      conflict-aware weightings see no conflict; prefer ``"sample_gramian"`` or ``"exact"``
      there (a warning says so).
    - ``"subset"``: exact G over ``subset`` (e.g. the last block), weights applied to all shared
      parameters with one weighted backward.
    - ``"sample_gramian"``: single-label class groups; G = S^T P S from per-sample gradient
      Gramians of the layers (see :mod:`labelgrad.aggregation.engines.sample_gramian`).

    Args:
        losses: (K,) label losses, e.g. from :func:`labelgrad.per_label_losses`.
        shared: the shared parameters (an iterable, or an ``nn.Module`` for all of its
            trainable parameters).
        aggregator: an ``lg.aggregators`` aggregator instance (``weights(G) -> (K,)``), or
            :class:`labelgrad.aggregation.Amortized` around one.
        engine: ``"auto"``, ``"exact"``, ``"representation"``, ``"subset"`` or
            ``"sample_gramian"``.
        features: the shared representation (for ``"representation"``).
        head: the ``nn.Linear`` mapping ``features`` to the logits (closed-form representation).
        subset: parameters (a subset of ``shared``) to compute G over (``"subset"``).
        chunk_size: rows per batched per-label backward; default from ``memory_budget``.
        memory_budget: bytes the per-label gradients may hold at once (the exact engine's peak
            stays within about 1.5x of it, plus the K x K Gramian where that is not small).
        batched: True: vmap only; False: loop of K backward passes; None: vmap, loop fallback.
        nonfinite: ``"raise"``: a non-finite Gramian, non-finite weights (e.g. a solver's NaN)
            or non-finite cached weights raise ValueError naming the aggregator;
            ``"propagate"``: the non-finite gradient is written so that ``GradScaler`` skips the
            step. On steps where :class:`labelgrad.aggregation.Amortized` reuses its weights
            (no Gramian), ``"raise"`` checks the losses before the backward and the shared
            parameters' gradients after it. The check reads a flag back to the host, so it
            runs on CPU tensors only; on accelerators both modes propagate (no host sync per
            step).
        tracker: the :class:`labelgrad.aggregation.Tracker` for ``"sample_gramian"`` (default:
            the one :func:`labelgrad.aggregation.track` attached to ``shared``).
        structure: the :class:`labelgrad.aggregation.LossStructure` of the losses (default: the
            one :func:`labelgrad.per_label_losses` recorded on their graph, found through
            elementwise operations). Passing one asserts that loss k depends on the logits of
            group k alone.

    Returns:
        An :class:`AggregationResult` (weights, Gramian, engine, reason).

    Raises:
        TypeError, ValueError: malformed losses or arguments, an aggregator that is not an
            instance, shared parameters the losses do not reach, features off the graph, a
            non-finite Gramian or weights, an engine that cannot run.

    Example:
        >>> import torch, labelgrad as lg
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> trunk, head = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)
        >>> x, y = torch.randn(10, 6), torch.randint(0, 2, (10, 3))
        >>> losses = lg.per_label_losses(head(torch.relu(trunk(x))), y)
        >>> class Sum:  # w = 1: the plain gradient of the mean loss
        ...     def weights(self, G):
        ...         return torch.ones(G.shape[0])
        >>> out = lg.aggregate_backward(losses, shared=trunk.parameters(), aggregator=Sum())
        >>> out.engine, out.weights.tolist()
        ('exact', [1.0, 1.0, 1.0])
    """
    _check_losses(losses)
    check_aggregator(aggregator)
    params = _as_params(shared, "shared")
    kw = _defaults(
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        batched=batched,
        nonfinite=nonfinite,
        tracker=tracker,
        structure=structure,
    )
    options = _options(losses, engine, features, head, subset, kw)
    call = Call(losses, shared, params, aggregator, options)
    return _run(call, choose(call))


def _run(call: Call, choice: Choice) -> AggregationResult:
    """Gramian (or reused weights), weights, weighted backward: the same steps for every engine."""
    engine = choice.engine
    prepared = engine.gramian(call)
    w = prepared.weights
    if w is None and not call.needs_jacobian:
        assert prepared.gramian is not None
        w = weigh(call.aggregator, prepared.gramian, call.options.nonfinite)
        if isinstance(call.aggregator, Amortized):
            call.aggregator.store(w)
    engine.backward(call, prepared, w)
    # A copy (K values): the caller may edit the result in place without reaching the
    # aggregator's state (Amortized's cache, a user-defined weighting's buffer). The Gramian is
    # the engine's fresh tensor, held by nobody else.
    weights = None if w is None else w.detach().clone()
    return AggregationResult(weights, prepared.gramian, engine.name, choice.reason)
