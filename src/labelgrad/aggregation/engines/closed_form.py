"""The representation engine in closed form, for a Linear head: no per-label backward.

For ``logits = head(features)`` and losses from :func:`labelgrad.per_label_losses` (loss k a
function of the logits of group k alone), the gradient of loss k at the features is ``D_k W``:
``G = S^T ((D^T D) ⊙ (W W^T)) S`` from the logit gradient D of ``losses.sum()`` alone.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from labelgrad.aggregation import _graph
from labelgrad.aggregation.engines.protocol import Call, Prepared, Verdict, own
from labelgrad.aggregation.engines.representation import (
    RepresentationPrepared,
    check_features,
    features_verdict,
    weighted_feature_backward,
)
from labelgrad.aggregation.per_label_jacobian import closed_form
from labelgrad.policies import no_state_update

__all__ = ["ClosedFormRepresentation"]


class ClosedFormRepresentation:
    """The closed-form Gramian of a Linear head between ``features`` and the logits."""

    name: ClassVar[str] = "representation"
    reuses_weights: ClassVar[bool] = False

    def applies(self, call: Call) -> Verdict:
        refusal = features_verdict(self.name, call)
        if refusal is not None:
            return refusal
        why = self._obstacle(call)
        if why is not None:
            return Verdict(self.name, False, why[0], why[1])
        detail = (
            "representation engine, closed form (D^T D) ⊙ (W W^T) of the Linear head: "
            "no per-label backward"
        )
        return Verdict(self.name, True, "closed_form", detail)

    @staticmethod
    def _obstacle(call: Call) -> tuple[str, str] | None:
        head, structure = call.options.head, call.options.structure
        features = call.options.features
        assert features is not None
        if head is None:
            return "no_head", "no head= given"
        if not isinstance(head, nn.Linear):
            return "not_linear", f"head is a {type(head).__name__}, not an nn.Linear"
        if structure is None:
            note = call.options.structure_note or "losses not from lg.per_label_losses"
            return "no_structure", note
        if structure.kind == "dense":
            return "dense", "dense cross-entropy losses (soft targets couple the classes)"
        if not _graph.linear_head_between(structure.logits, features, head):
            return "not_head_output", (
                "logits are not head(features) directly (a policy or other op in between)"
            )
        return None

    def gramian(self, call: Call) -> Prepared:
        check_features(call)
        structure, head = call.options.structure, call.options.head
        assert structure is not None
        assert isinstance(head, nn.Linear)
        # D: one backward from the losses to the logits only (the loss's own elementwise ops).
        with no_state_update():
            ones = torch.ones_like(call.losses)  # grad_outputs: no sum node and its backward
            (d,) = torch.autograd.grad(
                call.losses, structure.logits, grad_outputs=ones, retain_graph=True
            )
        fj = closed_form(d, structure, head)
        # The final backward can start at the logits with D (not redo losses -> logits) unless
        # a leaf hangs between them (e.g. a callable loss with a parameter of its own).
        stop = structure.logits.grad_fn
        from_logits = stop is not None and not _graph.leaves_reached(call.losses, stop=stop)
        return RepresentationPrepared(
            fj.gramian(), features_jacobian=fj, logit_grad=d if from_logits else None
        )

    def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
        assert weights is not None
        mine = own(prepared, RepresentationPrepared)
        structure = call.options.structure
        assert structure is not None
        d = mine.logit_grad
        start = None if d is None else (structure.logits, d)
        weighted_feature_backward(call, mine.features_jacobian, weights, start=start)
