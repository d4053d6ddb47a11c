"""Per-label Jacobians and Gramians: the expensive half of gradient aggregation.

Two engines live here (the per-sample engine of class groups is in :mod:`.sample_gramian`):

- ``exact``: the K per-label gradients over the shared parameters by batched vector-Jacobian
  products (``torch.autograd.grad(..., is_grads_batched=True)``, i.e. vmap over the backward),
  chunked so that at most ``chunk_size`` rows run at once; a loop of K backward passes where
  vmap cannot run (BatchNorm in training, custom autograd functions without batching rules).
- ``representation``: the K per-label gradients with respect to a shared representation
  ``features``. For a Linear head ``z = f W^T + b`` and losses that depend on disjoint columns of
  ``z`` (one label or one group of classes each), the gradient of loss k at ``f`` is
  ``D_k W`` with ``D_k`` the logit gradient D restricted to the columns of group k, so
  ``G = S^T ((D^T D) ⊙ (W W^T)) S`` (S: class-to-group membership): no backward at all beyond
  the logits. For class groups of single-label data (cross-entropy) the groups are
  sample-disjoint and that Gramian is diagonal by construction.

All per-label passes run inside :func:`labelgrad.no_state_update`, so stateful policies count
each batch once (in the one ordinary backward that follows).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from labelgrad.aggregation.losses import LossStructure
from labelgrad.policies import no_state_update

__all__ = [
    "FeatureJacobian",
    "closed_form",
    "exact_jacobian",
    "gramian_of",
    "linear_head_feature_jacobian",
    "representation_jacobian",
]

_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Warn ``message`` once per process and ``key``."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


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
    k = losses.numel()
    eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
    step = k if chunk_size is None else max(1, min(k, chunk_size))
    with no_state_update():
        if batched is not False:
            try:
                parts = [
                    _batched_grad(losses, inputs, eye[i : i + step]) for i in range(0, k, step)
                ]
                return _stack_chunks(parts, len(inputs))
            except RuntimeError as err:
                if batched:
                    raise
                warn_once(
                    f"vmap:{type(err).__name__}",
                    "labelgrad: batched per-label backward (vmap) failed, falling back to a loop "
                    f"of K backward passes (pass batched=False to skip the attempt): {err}",
                )
        rows = []
        for i in range(k):
            rows.append(
                torch.autograd.grad(
                    losses, list(inputs), grad_outputs=eye[i], retain_graph=True, allow_unused=True
                )
            )
        return [
            None if rows[0][j] is None else torch.stack([r[j] for r in rows])
            for j in range(len(inputs))
        ]


def _stack_chunks(parts: list[tuple[Tensor | None, ...]], n: int) -> list[Tensor | None]:
    out: list[Tensor | None] = []
    for j in range(n):
        pieces = [p[j] for p in parts]
        if any(x is None for x in pieces):
            out.append(None)
        elif len(pieces) == 1:
            out.append(pieces[0])
        else:
            out.append(torch.cat(pieces))  # type: ignore[arg-type]
    return out


def gramian_of(jacobians: Sequence[Tensor]) -> Tensor:
    """G = J J^T summed over the blocks of J (each (K, *shape)), in float32 or wider."""
    k = jacobians[0].shape[0]
    dtype = torch.promote_types(jacobians[0].dtype, torch.float32)
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
        d, w = d.to(dtype), w.to(dtype)
        if self.kind == "column":
            assert self.group_of_col is not None
            gc = (d.T @ d) * (w @ w.T)  # (C, C)
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
        w = weights.to(d.dtype)
        if self.kind == "column":
            assert self.group_of_col is not None
            scaled = d * (w if self.identity else w[self.group_of_col])
        else:
            assert self.group_of_row is not None
            scaled = d * w[self.group_of_row].unsqueeze(1)
        return (scaled @ wt.to(d.dtype)).reshape(shape)


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


def linear_head_feature_jacobian(
    losses: Tensor, structure: LossStructure, head: torch.nn.Linear
) -> FeatureJacobian:
    """Closed form for ``logits = head(features)``: only the gradient at the logits is needed."""
    with no_state_update():
        (d,) = torch.autograd.grad(losses.sum(), structure.logits, retain_graph=True)
    return closed_form(d, structure, head)


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
