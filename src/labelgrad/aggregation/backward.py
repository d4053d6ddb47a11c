"""``aggregate_backward``: K label losses -> Gramian -> weights -> the gradient of the shared part.

The shared parameters receive the aggregated gradient ``J^T w`` (the gradient of
``sum_k w_k L_k``, where ``w = aggregator.weights(J J^T)``); every other parameter the losses
reach receives the plain gradient of ``losses.sum()``. Gradients are *added* to ``.grad``, as
``Tensor.backward`` does, so gradient accumulation works.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from labelgrad.aggregation import _graph
from labelgrad.aggregation.engines import (
    closed_form,
    exact_jacobian,
    gramian_of,
    representation_jacobian,
    warn_once,
)
from labelgrad.aggregation.losses import LossStructure, loss_structure
from labelgrad.policies import no_state_update

__all__ = ["AggregationResult", "Aggregator", "aggregate_backward", "explain_engine"]

EngineName = Literal["auto", "exact", "representation", "subset", "sample_gramian"]
_ENGINES = ("auto", "exact", "representation", "subset", "sample_gramian")


class Aggregator(Protocol):
    """What ``aggregate_backward`` needs from an aggregator (``lg.aggregators.*``).

    Weightings implement ``weights(G) -> (K,)``; aggregators that need more than the Gramian
    (ConFIG, GradDrop) set ``requires_jacobian = True`` and implement ``aggregate(J) -> (P,)``.

    Example:
        >>> import torch, labelgrad as lg
        >>> agg: lg.aggregation.Aggregator = lg.aggregators.UPGrad()
        >>> agg.weights(torch.eye(3)).shape
        torch.Size([3])
    """

    def weights(self, gramian: Tensor, /) -> Tensor:
        """The (K,) weights of the K losses, from the K x K Gramian."""
        ...


@dataclass(frozen=True)
class AggregationResult:
    """What :func:`aggregate_backward` did.

    Attributes:
        weights: the (K,) weights applied to the losses on the shared parameters (None for
            Jacobian aggregators such as ConFIG, whose update is not a weighting).
        gramian: the (K, K) Gramian the weights were computed from (None when cached weights
            of :class:`labelgrad.aggregation.Amortized` were reused).
        engine: the engine that ran.
        reason: why that engine (what ``explain_engine`` says).

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


def _requires_jacobian(aggregator: object) -> bool:
    return bool(getattr(aggregator, "requires_jacobian", False))


def _choose(
    losses: Tensor,
    aggregator: object,
    engine: str,
    features: Tensor | None,
    head: nn.Module | None,
    shared: object,
    subset: object,
) -> tuple[str, str]:
    """(engine, reason) for the given call; raises where the asked engine cannot run."""
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {_ENGINES}, got {engine!r}")
    structure = loss_structure(losses)
    jac = _requires_jacobian(aggregator)
    if engine in ("representation", "subset", "sample_gramian") and jac:
        raise ValueError(
            f"{type(aggregator).__name__} needs the Jacobian over the shared parameters, not a "
            f"Gramian: use engine='exact' (engine={engine!r} cannot run it)"
        )
    if engine == "representation" and features is None:
        raise ValueError("engine='representation' needs features= (the shared representation)")
    if engine == "subset" and subset is None:
        raise ValueError("engine='subset' needs subset= (the parameters to compute G over)")
    if engine == "sample_gramian":
        from labelgrad.aggregation.sample_gramian import applicability

        ok, why = applicability(losses, shared)
        if not ok:
            raise ValueError(f"engine='sample_gramian' cannot run here: {why}")
        return "sample_gramian", why
    if engine == "auto":
        if jac:
            return "exact", (
                f"{type(aggregator).__name__} needs the full Jacobian: exact engine (J stored)"
            )
        if features is not None:
            engine = "representation"
        elif subset is not None:
            engine = "subset"
        else:
            from labelgrad.aggregation.sample_gramian import applicability

            ok, why = applicability(losses, shared)
            if ok:
                return "sample_gramian", why
            return "exact", (
                "exact engine: batched per-label VJPs over the shared parameters "
                f"(sample-Gramian engine not applicable: {why})"
            )
    if engine == "representation":
        assert features is not None
        if (
            structure is not None
            and structure.kind != "dense"
            and isinstance(head, nn.Linear)
            and _graph.linear_head_between(structure.logits, features, head)
        ):
            return "representation", (
                "representation engine, closed form (D^T D) ⊙ (W W^T) of the Linear head: "
                "no per-label backward"
            )
        why = (
            "no head= given"
            if head is None
            else "losses not from lg.per_label_losses"
            if structure is None
            else "dense cross-entropy losses"
            if structure.kind == "dense"
            else "logits are not head(features) directly (a policy or other op in between)"
        )
        return "representation", f"representation engine, batched VJPs to the features ({why})"
    if engine == "subset":
        return (
            "subset",
            "subset engine: exact Gramian over the parameter subset, one weighted backward",
        )
    return "exact", "exact engine: batched per-label VJPs over the shared parameters"


def explain_engine(
    losses: Tensor,
    shared: Iterable[Tensor] | nn.Module | None = None,
    aggregator: object = None,
    engine: EngineName = "auto",
    features: Tensor | None = None,
    *,
    head: nn.Module | None = None,
    subset: Iterable[Tensor] | None = None,
) -> str:
    """Say which engine :func:`aggregate_backward` would use for these arguments, and why.

    Example:
        >>> import torch, labelgrad as lg
        >>> net = torch.nn.Linear(4, 3)
        >>> losses = lg.per_label_losses(net(torch.randn(5, 4)), torch.randint(0, 2, (5, 3)))
        >>> lg.explain_engine(losses, shared=net.parameters()).split(":")[0]
        'exact engine'
    """
    _check_losses(losses)
    return _choose(losses, aggregator, engine, features, head, shared, subset)[1]


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
) -> AggregationResult:
    """Backward of K label losses with their gradients aggregated on the shared parameters.

    The shared parameters receive ``J^T w`` with ``w = aggregator.weights(G)`` (or
    ``aggregator.aggregate(J)`` for Jacobian aggregators); every other parameter the losses reach
    receives the plain gradient of ``losses.sum()``. Gradients are added to ``.grad``. The graph
    is freed afterwards (as ``losses.sum().backward()`` would).

    Engines (``engine="auto"`` picks the cheapest that is correct; :func:`explain_engine` says
    which and why):

    - ``"exact"``: G over the shared parameters from batched per-label VJPs (vmap), chunked to
      ``memory_budget`` bytes of per-label gradients per batch (or ``chunk_size`` rows), loop
      fallback where vmap cannot run (``batched``). J (K, P) is materialised, so the update
      ``J^T w`` needs no second backward through the shared part.
    - ``"representation"``: G of the per-label gradients at ``features``; the weighted feature
      gradient then flows into everything upstream of ``features`` in one ordinary backward.
      With ``head=`` the Linear head mapping ``features`` to the logits, and losses from
      :func:`labelgrad.per_label_losses`, G has a closed form (no per-label backward). For
      single-label class groups (cross-entropy) this Gramian is diagonal by construction (the
      groups are sample-disjoint at the features): conflict-aware weightings see no conflict;
      prefer ``"sample_gramian"`` or ``"exact"`` there (a warning says so).
    - ``"subset"``: exact G over ``subset`` (e.g. the last block), weights applied to all shared
      parameters with one weighted backward.
    - ``"sample_gramian"``: single-label class groups; G = S^T P S from per-sample gradient
      Gramians of the layers (see :mod:`labelgrad.aggregation.sample_gramian`).

    Args:
        losses: (K,) label losses, e.g. from :func:`labelgrad.per_label_losses`.
        shared: the shared parameters (an iterable, or an ``nn.Module`` for all of its
            trainable parameters).
        aggregator: an ``lg.aggregators`` aggregator (``weights(G) -> (K,)``), or
            :class:`labelgrad.aggregation.Amortized` around one.
        engine: ``"auto"``, ``"exact"``, ``"representation"``, ``"subset"`` or
            ``"sample_gramian"``.
        features: the shared representation (for ``"representation"``).
        head: the ``nn.Linear`` mapping ``features`` to the logits (closed-form representation).
        subset: parameters (a subset of ``shared``) to compute G over (``"subset"``).
        chunk_size: rows per batched per-label backward; default from ``memory_budget``.
        memory_budget: bytes of per-label gradients per batched backward when ``chunk_size`` is
            None.
        batched: True: vmap only; False: loop of K backward passes; None: vmap, loop fallback.
        nonfinite: ``"raise"``: a non-finite Gramian raises ValueError; ``"propagate"``: the
            plain (non-finite) gradient is written so that ``GradScaler`` skips the step. The
            check reads a flag back to the host, so it runs on CPU tensors only; on accelerators
            both modes propagate (no host sync per step).

    Returns:
        An :class:`AggregationResult` (weights, Gramian, engine, reason).

    Raises:
        TypeError, ValueError: malformed losses, shared parameters the losses do not reach,
            features off the graph, a non-finite Gramian, an engine that cannot run.

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
    params = _as_params(shared, "shared")
    name, reason = _choose(losses, aggregator, engine, features, head, shared, subset)
    from labelgrad.aggregation.amortized import Amortized

    amortized = aggregator if isinstance(aggregator, Amortized) else None
    k = losses.numel()
    if amortized is not None and not amortized.due(k):
        w = amortized.cached(k, losses)
        _weighted_backward(losses, params, w)
        return AggregationResult(w, None, name, reason + "; cached weights (Amortized)")

    if name == "exact":
        return _run_exact(
            losses, params, aggregator, reason, chunk_size, memory_budget, batched, nonfinite
        )
    if name == "subset":
        assert subset is not None
        sub = _as_params(subset, "subset")
        ids = {id(p) for p in params}
        if any(id(p) not in ids for p in sub):
            raise ValueError("subset must contain only parameters that are also in shared")
        jac = _jacobian_checked(losses, sub, "subset", chunk_size, memory_budget, batched)
        g = gramian_of(jac)
        w = _weights(aggregator, g, nonfinite)
        _weighted_backward(losses, params, w)
        return AggregationResult(w, g, name, reason)
    if name == "representation":
        assert features is not None
        return _run_representation(
            losses,
            params,
            aggregator,
            features,
            head,
            reason,
            chunk_size,
            memory_budget,
            batched,
            nonfinite,
        )
    from labelgrad.aggregation.sample_gramian import run_sample_gramian

    g, w = run_sample_gramian(
        losses, shared, params, lambda g_: _weights(aggregator, g_, nonfinite)
    )
    return AggregationResult(w, g, name, reason)


def _rows_per_chunk(params: Sequence[Tensor], chunk_size: int | None, budget: int) -> int | None:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        return chunk_size
    per_row = sum(p.numel() * p.element_size() for p in params)
    # A batched backward holds the per-row gradients plus about as much again in flight.
    return max(1, budget // max(1, 2 * per_row))


def _jacobian_checked(
    losses: Tensor,
    params: Sequence[Tensor],
    name: str,
    chunk_size: int | None,
    budget: int,
    batched: bool | None,
) -> list[Tensor]:
    rows = _rows_per_chunk(params, chunk_size, budget)
    jac = exact_jacobian(losses, params, chunk_size=rows, batched=batched)
    missing = [i for i, j in enumerate(jac) if j is None]
    if missing:
        shapes = [tuple(params[i].shape) for i in missing[:5]]
        raise ValueError(
            f"the losses do not reach {len(missing)} of the {name} parameters (indices "
            f"{missing[:5]}, shapes {shapes}): pass only parameters the losses depend on"
        )
    return [j for j in jac if j is not None]


def _weights(aggregator: Any, g: Tensor, nonfinite: str) -> Tensor:
    k = g.shape[0]
    finite = torch.isfinite(g).all()
    if g.device.type == "cpu":  # reading the flag back is free on the CPU
        if not bool(finite):
            if nonfinite == "propagate":
                return torch.ones(k, dtype=g.dtype, device=g.device)
            raise ValueError(
                "the Gramian of the label gradients is not finite (inf/NaN in some label's "
                "gradient, e.g. a diverged model or a half-precision overflow); pass "
                "nonfinite='propagate' to write the non-finite plain gradient instead "
                "(GradScaler then skips the step)"
            )
    else:
        # On an accelerator the decision stays on the device (no host sync): the weighting sees
        # a finite G, and a non-finite G selects plain weights, so the non-finite gradient
        # reaches .grad and a GradScaler skips the step.
        safe = torch.where(torch.isfinite(g), g, torch.zeros((), dtype=g.dtype, device=g.device))
        w = _checked_weights(aggregator, safe, k)
        w = torch.where(finite, w, torch.ones_like(w))
        _remember(aggregator, w)
        return w
    w = _checked_weights(aggregator, g, k)
    _remember(aggregator, w)
    return w


def _checked_weights(aggregator: Any, g: Tensor, k: int) -> Tensor:
    w = aggregator.weights(g)
    if not isinstance(w, Tensor) or w.shape != (k,):
        raise ValueError(
            f"{type(aggregator).__name__}.weights(G) must return a ({k},) tensor, got "
            f"{getattr(w, 'shape', type(w).__name__)}"
        )
    return w


def _add_grad(p: Tensor, g: Tensor) -> None:
    g = g.to(p.dtype)
    if p.grad is None:
        p.grad = g.detach().clone()
    else:
        p.grad.add_(g)


def _others(losses: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    ids = {id(p) for p in params}
    return [leaf for leaf in _graph.leaves_reached(losses) if id(leaf) not in ids]


def _plain_backward_of_others(
    losses: Tensor, params: Sequence[Tensor], updates: list[Tensor]
) -> None:
    """Plain gradient of losses.sum() for the non-shared leaves; ``updates`` into the shared."""
    others = _others(losses, params)
    if others:
        torch.autograd.backward(losses.sum(), inputs=others)
        with torch.no_grad():
            for p, u in zip(params, updates):
                _add_grad(p, u)
        return
    # No other parameter: one backward with the shared gradients replaced, so that stateful
    # policies at the logits still see this batch once.
    handles = [p.register_hook(lambda _g, u=u: u.to(_g.dtype)) for p, u in zip(params, updates)]
    try:
        torch.autograd.backward(losses.sum(), inputs=list(params))
    finally:
        for h in handles:
            h.remove()


def _run_exact(
    losses: Tensor,
    params: list[Tensor],
    aggregator: Any,
    reason: str,
    chunk_size: int | None,
    budget: int,
    batched: bool | None,
    nonfinite: str,
) -> AggregationResult:
    jac = _jacobian_checked(losses, params, "shared", chunk_size, budget, batched)
    k = losses.numel()
    if _requires_jacobian(aggregator):
        flat = torch.cat([j.reshape(k, -1) for j in jac], dim=1)
        # Checked where that is free (CPU); elsewhere the non-finite update reaches .grad.
        if nonfinite == "raise" and flat.device.type == "cpu" and not bool(flat.isfinite().all()):
            raise ValueError("the Jacobian of the label losses is not finite (inf/NaN)")
        update = aggregator.aggregate(flat)
        if not isinstance(update, Tensor) or update.shape != (flat.shape[1],):
            raise ValueError(
                f"{type(aggregator).__name__}.aggregate(J) must return a ({flat.shape[1]},) tensor"
            )
        sizes = [p.numel() for p in params]
        updates = [u.reshape(p.shape) for u, p in zip(update.split(sizes), params)]
        _plain_backward_of_others(losses, params, updates)
        return AggregationResult(None, None, "exact", reason)
    g = gramian_of(jac)
    w = _weights(aggregator, g, nonfinite)
    updates = [torch.tensordot(w.to(j.dtype), j, dims=1) for j in jac]
    _plain_backward_of_others(losses, params, updates)
    return AggregationResult(w, g, "exact", reason)


def _remember(aggregator: Any, w: Tensor) -> None:
    from labelgrad.aggregation.amortized import Amortized

    if isinstance(aggregator, Amortized):
        aggregator.store(w)


def _weighted_backward(losses: Tensor, params: Sequence[Tensor], w: Tensor) -> None:
    """Shared parameters: gradient of sum_k w_k L_k; all others: gradient of losses.sum()."""
    others = _others(losses, params)
    if others:
        with no_state_update():
            torch.autograd.backward(
                losses,
                grad_tensors=w.to(losses.dtype).detach(),
                inputs=list(params),
                retain_graph=True,
            )
        torch.autograd.backward(losses.sum(), inputs=others)
    else:
        torch.autograd.backward(
            losses, grad_tensors=w.to(losses.dtype).detach(), inputs=list(params)
        )


def _run_representation(
    losses: Tensor,
    params: list[Tensor],
    aggregator: Any,
    features: Tensor,
    head: nn.Module | None,
    reason: str,
    chunk_size: int | None,
    budget: int,
    batched: bool | None,
    nonfinite: str,
) -> AggregationResult:
    if not isinstance(features, Tensor) or not features.requires_grad:
        raise ValueError(
            "features is not on the autograd graph of the losses (it does not require grad)"
        )
    reached = _graph.nodes_reached(losses.grad_fn)
    on_graph = any(
        node is features.grad_fn or getattr(node, "variable", None) is features for node in reached
    )
    if not on_graph:
        raise ValueError(
            "features is not on the autograd graph of the losses: pass the representation the "
            "logits were computed from (e.g. features = backbone(x); logits = head(features))"
        )
    structure: LossStructure | None = loss_structure(losses)
    if structure is not None and structure.kind == "sample":
        warn_once(
            "repr-diagonal",
            "labelgrad: the representation Gramian of single-label class groups is diagonal by "
            "construction (the groups are sample-disjoint at the features), so conflict-aware "
            "weightings see no conflict; use engine='sample_gramian' or 'exact' for that data",
        )
    upstream = _graph.leaves_reached(features)
    up_ids = {id(p) for p in upstream}
    unreached = [i for i, p in enumerate(params) if id(p) not in up_ids]
    if unreached:
        raise ValueError(
            f"shared parameters {unreached[:5]} do not lie upstream of features: with "
            "engine='representation' the shared parameters are those that compute features"
        )
    if "closed form" in reason:
        assert structure is not None
        assert isinstance(head, nn.Linear)
        return _closed_form_backward(
            losses, structure, head, features, aggregator, nonfinite, reason
        )
    rows = _rows_per_chunk([features], chunk_size, budget)
    fj = representation_jacobian(losses, features, chunk_size=rows, batched=batched)
    g = fj.gramian()
    w = _weights(aggregator, g, nonfinite)
    weighted = fj.combine(w, features.shape).to(features.dtype)
    handle = features.register_hook(lambda _g: weighted)
    try:
        torch.autograd.backward(losses.sum())
    finally:
        handle.remove()
    return AggregationResult(w, g, "representation", reason)


def _closed_form_backward(
    losses: Tensor,
    structure: LossStructure,
    head: nn.Linear,
    features: Tensor,
    aggregator: Any,
    nonfinite: str,
    reason: str,
) -> AggregationResult:
    """One ordinary backward: D is caught at the logits, G and w are formed when the backward
    reaches the features, whose gradient is replaced by the weighted one."""
    found: dict[str, Tensor] = {}

    def at_logits(grad: Tensor) -> None:
        found["d"] = grad

    def at_features(grad: Tensor) -> Tensor:
        fj = closed_form(found["d"], structure, head)
        found["g"] = fj.gramian()
        found["w"] = _weights(aggregator, found["g"], nonfinite)
        return fj.combine(found["w"], features.shape).to(grad.dtype)

    handles = [structure.logits.register_hook(at_logits), features.register_hook(at_features)]
    try:
        torch.autograd.backward(losses.sum())
    finally:
        for h in handles:
            h.remove()
    return AggregationResult(found["w"], found["g"], "representation", reason)
