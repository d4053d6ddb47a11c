"""The representation engine, batched: G of the per-label gradients at ``features``.

The K per-label gradients are taken at the shared representation only (batched VJPs from the
losses to ``features``); the weighted feature gradient then flows into everything upstream of
``features`` in one ordinary backward. :mod:`.closed_form` is the same engine without the
per-label VJPs, for a Linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from labelgrad.aggregation import _graph
from labelgrad.aggregation._warn import warn_once
from labelgrad.aggregation.engines._shared import jacobian_refusal, rows_per_chunk
from labelgrad.aggregation.engines.protocol import Call, Prepared, Verdict, own
from labelgrad.aggregation.per_label_jacobian import (
    FeatureJacobian,
    representation_jacobian,
    row_bytes,
)

__all__ = [
    "BatchedRepresentation",
    "RepresentationPrepared",
    "check_features",
    "features_verdict",
    "weighted_feature_backward",
]


@dataclass(eq=False, kw_only=True)
class RepresentationPrepared(Prepared):
    """The representation engines' record.

    Attributes:
        features_jacobian: the per-label gradients at ``features`` (stored or closed form).
        logit_grad: the closed form's logit gradient D of ``losses.sum()``, to start the final
            backward at the logits; None: start it at the losses.
    """

    features_jacobian: FeatureJacobian
    logit_grad: Tensor | None = None


def features_verdict(name: str, call: Call) -> Verdict | None:
    """The refusal shared by the representation engines (no features, a Jacobian aggregator)."""
    asked = call.options.engine == "representation"
    if call.options.features is None:
        detail = "engine='representation' needs features= (the shared representation)"
        return Verdict(name, False, "no_features", detail, asked=asked)
    return jacobian_refusal(name, call, asked)


def check_features(call: Call) -> Tensor:
    """``features`` on the losses' graph, with every shared parameter upstream of it."""
    features = call.options.features
    if not isinstance(features, Tensor) or not features.requires_grad:
        raise ValueError(
            "features is not on the autograd graph of the losses (it does not require grad)"
        )
    if features.grad_fn is not None:
        on_graph = _graph.reaches(call.losses.grad_fn, features.grad_fn)
    else:
        on_graph = _graph.reaches_leaf(call.losses, features)
    if not on_graph:
        raise ValueError(
            "features is not on the autograd graph of the losses: pass the representation the "
            "logits were computed from (e.g. features = backbone(x); logits = head(features))"
        )
    upstream = {id(p) for p in _graph.leaves_reached(features)}
    unreached = [i for i, p in enumerate(call.params) if id(p) not in upstream]
    if unreached:
        raise ValueError(
            f"shared parameters {unreached[:5]} do not lie upstream of features: with "
            "engine='representation' the shared parameters are those that compute features"
        )
    structure = call.options.structure
    if structure is not None and structure.kind == "sample":
        warn_once(
            "repr-diagonal",
            "labelgrad: the representation Gramian of single-label class groups is diagonal by "
            "construction (the groups are sample-disjoint at the features), so conflict-aware "
            "weightings see no conflict; use engine='sample_gramian' or 'exact' for that data",
        )
    return features


def weighted_feature_backward(
    call: Call,
    fj: FeatureJacobian,
    weights: Tensor,
    start: tuple[Tensor, Tensor] | None = None,
) -> None:
    """One ordinary backward with the feature gradient replaced by the weighted one.

    ``start``: (tensor, its gradient) to start from instead of ``losses.sum()`` (the logits and
    the D already computed, so the loss's own ops are not run twice).
    """
    features = call.options.features
    assert features is not None
    weighted = fj.combine(weights, features.shape)
    if weighted.dtype != features.dtype:
        weighted = weighted.to(features.dtype)
    handle = features.register_hook(lambda _g: weighted)
    try:
        if start is None:
            torch.autograd.backward(call.losses.sum())
        else:
            torch.autograd.backward(start[0], grad_tensors=start[1])
    finally:
        handle.remove()


class BatchedRepresentation:
    """Batched VJPs from the losses to ``features`` (any losses, any head)."""

    name: ClassVar[str] = "representation"
    reuses_weights: ClassVar[bool] = False

    def applies(self, call: Call) -> Verdict:
        refusal = features_verdict(self.name, call)
        if refusal is not None:
            return refusal
        return Verdict(
            self.name, True, "batched_vjp", "representation engine, batched VJPs to the features"
        )

    def gramian(self, call: Call) -> Prepared:
        features = check_features(call)
        per_row = row_bytes([features])
        rows = rows_per_chunk(call.losses.numel(), per_row, call, inputs=[features])
        fj = representation_jacobian(
            call.losses, features, chunk_size=rows, batched=call.options.batched
        )
        return RepresentationPrepared(fj.gramian(), features_jacobian=fj)

    def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
        assert weights is not None
        fj = own(prepared, RepresentationPrepared).features_jacobian
        weighted_feature_backward(call, fj, weights)
