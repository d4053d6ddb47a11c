"""Per-label Jacobians and Gramians: the expensive half of gradient aggregation.

- :func:`exact_jacobian`: the K per-label gradients of any inputs by batched vector-Jacobian
  products (``torch.autograd.grad(..., is_grads_batched=True)``, i.e. vmap over the backward),
  chunked so that at most ``chunk_size`` rows run at once; a loop of K backward passes where
  vmap cannot run (BatchNorm in training, custom autograd functions without batching rules).
- :func:`blocked_gramian`: the same Gramian without ever holding J, block pair by block pair,
  for when J does not fit in the memory budget.
- :class:`FeatureJacobian`: the per-label gradients at a shared representation ``features``,
  either stored, or in the closed form of a Linear head ``z = f W^T + b`` whose losses depend on
  disjoint columns of ``z``: the gradient of loss k at ``f`` is ``D_k W`` (``D_k``: the logit
  gradient D restricted to the columns of group k), so ``G = S^T ((D^T D) ⊙ (W W^T)) S``.
  For class groups of single-label data (cross-entropy) the groups are sample-disjoint and that
  Gramian is diagonal by construction.

All per-label passes run inside :func:`labelgrad.no_state_update`, so stateful policies count
each batch once (in the one ordinary backward that follows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from labelgrad.aggregation import _graph
from labelgrad.aggregation._warn import warn_once
from labelgrad.aggregation.losses import LossStructure
from labelgrad.policies import no_state_update

__all__ = [
    "FeatureJacobian",
    "backward_row_bytes",
    "blocked_gramian",
    "closed_form",
    "exact_jacobian",
    "gramian_of",
    "representation_jacobian",
    "row_bytes",
]


def _batched_grad(
    losses: Tensor, inputs: Sequence[Tensor], rows: Tensor
) -> tuple[Tensor | None, ...]:
    return torch.autograd.grad(
        losses,
        list(inputs),
        grad_outputs=rows,
        retain_graph=True,
        is_grads_batched=True,
        allow_unused=True,
    )


def _identity_rows(k: int, start: int, stop: int, like: Tensor) -> Tensor:
    """Rows ``start:stop`` of the K x K identity, without forming the identity."""
    rows = torch.zeros(stop - start, k, dtype=like.dtype, device=like.device)
    rows.diagonal(offset=start).fill_(1)
    return rows


def exact_jacobian(
    losses: Tensor,
    inputs: Sequence[Tensor],
    *,
    chunk_size: int | None = None,
    batched: bool | None = None,
) -> list[Tensor | None]:
    """The Jacobian of ``losses`` (K,) with respect to each of ``inputs``: (K, *input.shape).

    Args:
        losses: (K,) tensor on the autograd graph.
        inputs: tensors (parameters or activations) the losses depend on.
        chunk_size: at most this many rows of the identity per batched backward (bounds the
            memory of the vmapped backward); None: all K at once.
        batched: True: vmap only (errors propagate); False: loop of K backward passes; None:
            try vmap and fall back to the loop, with a warning, where it cannot run.

    Returns:
        One (K, *shape) tensor per input, None where the losses do not reach that input.
    """
    with no_state_update():
        return _row_range(losses, inputs, 0, losses.numel(), chunk_size, batched)[0]


def _row_range(
    losses: Tensor,
    inputs: Sequence[Tensor],
    start: int,
    stop: int,
    chunk_size: int | None,
    batched: bool | None,
) -> tuple[list[Tensor | None], bool | None]:
    """Rows ``start:stop`` of the Jacobian, ``chunk_size`` rows per backward, copied in place
    (J is held once, not once more by a concatenation)."""
    out: list[Tensor | None] = []
    step = stop - start if chunk_size is None else max(1, chunk_size)
    for a in range(start, stop, step):
        b = min(stop, a + step)
        part, batched = _rows_of(losses, inputs, a, b, batched)
        if a == start and b == stop:
            return list(part), batched
        if a == start:
            out = [None if j is None else j.new_empty((stop - start, *j.shape[1:])) for j in part]
        for dst, src in zip(out, part):
            if dst is not None and src is not None:
                dst[a - start : b - start] = src
        del part
    return out, batched


def _rows_of(
    losses: Tensor, inputs: Sequence[Tensor], start: int, stop: int, batched: bool | None
) -> tuple[tuple[Tensor | None, ...], bool | None]:
    """Rows ``start:stop`` of the Jacobian: one batched backward, or a loop where vmap fails.

    Returns the rows and the ``batched`` mode for the next chunk (False after a fallback).
    """
    rows = _identity_rows(losses.numel(), start, stop, losses)
    if batched is not False:
        try:
            return _batched_grad(losses, inputs, rows), batched
        except RuntimeError as err:
            if batched:
                raise
            warn_once(
                f"vmap:{type(err).__name__}",
                "labelgrad: batched per-label backward (vmap) failed, falling back to a loop "
                f"of K backward passes (pass batched=False to skip the attempt): {err}",
            )
    each = [
        torch.autograd.grad(
            losses, list(inputs), grad_outputs=r, retain_graph=True, allow_unused=True
        )
        for r in rows
    ]
    out = tuple(
        None if each[0][j] is None else torch.stack([e[j] for e in each])
        for j in range(len(inputs))
    )
    return out, False


def row_bytes(inputs: Sequence[Tensor]) -> int:
    """Bytes of one row of the Jacobian with respect to ``inputs`` (one gradient of each)."""
    return sum(p.numel() * p.element_size() for p in inputs)


def backward_row_bytes(losses: Tensor, inputs: Sequence[Tensor]) -> int:
    """Bytes one row of a batched backward from ``losses`` holds besides its gradients of
    ``inputs``: about one gradient of every intermediate tensor of the graph.

    Estimated from the tensors the graph saved for backward (activations, logits: each has a
    gradient of its size in flight in every row), counted once per storage, the ``inputs``'
    own storages excluded (their gradients are :func:`row_bytes`). A tiny trunk under a large
    head at large K is dominated by this (N x C logit gradients per row), not by its parameters.
    """
    if losses.grad_fn is None:
        return 0
    skip = {p.untyped_storage().data_ptr() for p in inputs}
    seen: set[int] = set()
    total = 0
    for node in _graph.nodes_reached(losses.grad_fn):
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # freed, or not a tensor that can be unpacked
                continue
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if not isinstance(t, Tensor) or t.layout != torch.strided:
                    continue
                ptr = t.untyped_storage().data_ptr()
                if ptr in skip or ptr in seen:
                    continue
                seen.add(ptr)
                total += t.numel() * t.element_size()
    return total


def blocked_gramian(
    losses: Tensor,
    inputs: Sequence[Tensor],
    *,
    anchor_rows: int,
    chunk_size: int,
    batched: bool | None,
) -> tuple[Tensor, list[bool]]:
    """G = J J^T holding at most ``anchor_rows`` + ``chunk_size`` rows of J at once.

    Rows are taken ``anchor_rows`` at a time (the anchor block, kept) and the later rows are
    recomputed ``chunk_size`` at a time against it: about K^2 / (2 anchor_rows) per-label
    backward rows instead of K, for memory that does not grow with K x P. Used by the exact
    engine when J does not fit in ``memory_budget``.

    Returns:
        (G, reached): ``reached[i]`` is False where the losses do not reach ``inputs[i]``.
    """
    k = losses.numel()
    g: Tensor | None = None
    reached: list[bool] = []
    with no_state_update():
        for a0 in range(0, k, max(1, anchor_rows)):
            a1 = min(k, a0 + max(1, anchor_rows))
            block, batched = _row_range(losses, inputs, a0, a1, chunk_size, batched)
            if g is None:
                reached = [j is not None for j in block]
                dtype = _gramian_dtype([j for j in block if j is not None] or [losses])
                g = torch.zeros(k, k, dtype=dtype, device=losses.device)
            anchor = [j.reshape(a1 - a0, -1).to(g.dtype) for j in block if j is not None]
            del block
            for fa in anchor:
                g[a0:a1, a0:a1].addmm_(fa, fa.T)
            for b0, b1 in _chunks_between(a1, k, chunk_size):
                part, batched = _rows_of(losses, inputs, b0, b1, batched)
                tile = g[a0:a1, b0:b1]
                for fa, jb in zip(anchor, [j for j in part if j is not None]):
                    tile.addmm_(fa, jb.reshape(b1 - b0, -1).to(g.dtype).T)
                g[b0:b1, a0:a1] = tile.T
                del part
            del anchor
    assert g is not None
    return g, reached


def _chunks_between(start: int, stop: int, step: int) -> Iterator[tuple[int, int]]:
    step = max(1, step)
    return ((i, min(stop, i + step)) for i in range(start, stop, step))


def _gramian_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """float32 for half-precision gradients (their products overflow), their own dtype else."""
    return torch.promote_types(tensors[0].dtype, torch.float32)


def gramian_of(jacobians: Sequence[Tensor]) -> Tensor:
    """G = J J^T summed over the blocks of J (each (K, *shape)), in float32 or wider."""
    k = jacobians[0].shape[0]
    dtype = _gramian_dtype(jacobians)
    g = torch.zeros(k, k, dtype=dtype, device=jacobians[0].device)
    for j in jacobians:
        flat = j.reshape(k, -1).to(dtype)
        g.addmm_(flat, flat.T)
    return g


@dataclass(frozen=True)
class FeatureJacobian:
    """Per-label gradients at the features, in a form that gives G and the weighted gradient.

    Either ``jacobian`` (K, *features.shape), or the closed form of a Linear head: ``logit_grad``
    D (M, C) on flattened positions, the head weight W (C, Din), and the class (column kind) or
    sample (sample kind) group ids.
    """

    jacobian: Tensor | None = None
    logit_grad: Tensor | None = None
    weight: Tensor | None = None
    kind: str = "batched"
    group_of_row: Tensor | None = None  # sample kind: (M,) group id of each position
    group_of_col: Tensor | None = None  # column kind: (C,) group id of each class
    num_groups: int = 0
    identity: bool = False  # column kind: every class its own group, in order

    def gramian(self) -> Tensor:
        """The K x K Gramian of the per-label feature gradients."""
        if self.jacobian is not None:
            return gramian_of([self.jacobian])
        d, w, k = self.logit_grad, self.weight, self.num_groups
        assert d is not None
        assert w is not None
        dtype = torch.promote_types(d.dtype, torch.float32)
        d, w = _as_dtype(d, dtype), _as_dtype(w, dtype)
        if self.kind == "column":
            assert self.group_of_col is not None
            gc = torch.mm(d.t(), d).mul_(torch.mm(w, w.t()))  # (C, C)
            if self.identity:
                return gc
            ids = self.group_of_col
            rows = torch.zeros(k, gc.shape[1], dtype=dtype, device=gc.device).index_add_(0, ids, gc)
            return torch.zeros(k, k, dtype=dtype, device=gc.device).index_add_(1, ids, rows)
        assert self.group_of_row is not None
        sq = (d @ w).square().sum(dim=1)  # per-position squared feature-gradient norms
        diag = torch.zeros(k, dtype=dtype, device=d.device).index_add_(0, self.group_of_row, sq)
        return torch.diag(diag)

    def combine(self, weights: Tensor, shape: torch.Size) -> Tensor:
        """sum_k weights[k] * (gradient of loss k at the features), shaped like the features."""
        if self.jacobian is not None:
            w = weights.to(self.jacobian.dtype)
            out: Tensor = torch.tensordot(w, self.jacobian, dims=1)
            return out
        d, wt = self.logit_grad, self.weight
        assert d is not None
        assert wt is not None
        w = _as_dtype(weights, d.dtype)
        if self.kind == "column":
            assert self.group_of_col is not None
            scaled = d * (w if self.identity else w[self.group_of_col])
        else:
            assert self.group_of_row is not None
            scaled = d * w[self.group_of_row].unsqueeze(1)
        return torch.mm(scaled, _as_dtype(wt, d.dtype)).view(shape)


def _as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``; itself when it already is (a no-op ``.to`` still costs an operator)."""
    return t if t.dtype == dtype else t.to(dtype)


def representation_jacobian(
    losses: Tensor, features: Tensor, *, chunk_size: int | None, batched: bool | None
) -> FeatureJacobian:
    """Per-label feature gradients by batched VJPs from the losses to ``features`` only."""
    (jac,) = exact_jacobian(losses, [features], chunk_size=chunk_size, batched=batched)
    if jac is None:
        raise ValueError(
            "features is not on the autograd graph of the losses: pass the representation the "
            "logits were computed from (e.g. features = backbone(x); logits = head(features))"
        )
    return FeatureJacobian(jacobian=jac, kind="batched", num_groups=losses.numel())


def closed_form(
    logit_grad: Tensor, structure: LossStructure, head: torch.nn.Linear
) -> FeatureJacobian:
    """The closed-form :class:`FeatureJacobian` from D = d losses.sum() / d logits."""
    c = logit_grad.shape[structure.class_dim]
    d2 = logit_grad.movedim(structure.class_dim, -1).reshape(-1, c)
    weight = head.weight.detach()
    if structure.kind == "column":
        return FeatureJacobian(
            logit_grad=d2,
            weight=weight,
            kind="column",
            group_of_col=structure.class_group,
            num_groups=structure.num_groups,
            identity=structure.identity_groups,
        )
    return FeatureJacobian(
        logit_grad=d2,
        weight=weight,
        kind="sample",
        group_of_row=structure.sample_group,
        num_groups=structure.num_groups,
    )
