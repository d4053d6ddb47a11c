"""Compose policies into one gate."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labelgrad.policies._surrogate import SurrogatePolicy
from labelgrad.policies.clipping import ClipPerClass, ClipPerSample
from labelgrad.policies.eql import EQL
from labelgrad.policies.eqlv2 import EQLv2
from labelgrad.policies.linear import LinearPolicy, Multiplier
from labelgrad.policies.masking import FreezeClasses, Mask, MaskUnknown
from labelgrad.policies.monitor import GradMonitor
from labelgrad.policies.policy import GradContext, Policy
from labelgrad.policies.schedule import Schedule
from labelgrad.policies.weighting import ClassWeights, PosNegWeights

__all__ = ["Chain", "chain"]


class Chain(Policy):
    """Policies applied in order, in one autograd node. Built by :func:`chain`."""

    def __init__(self, *policies: Policy) -> None:
        super().__init__()
        flat: list[Policy] = []
        for i, p in enumerate(policies):
            if not isinstance(p, Policy):
                raise TypeError(
                    f"chain argument {i} must be a labelgrad Policy, got {type(p).__name__}"
                )
            flat.extend(p.members() if isinstance(p, Chain) else [p])
        _check_replacing_order(flat)
        expected = {c for p in flat if (c := p.expected_num_classes()) is not None}
        if len(expected) > 1:
            raise ValueError(f"chained policies were built for different num_classes: {expected}")
        self.policies = nn.ModuleList(flat)
        # Fixed at construction (a chain's members are not meant to change): read every step.
        self._members = tuple(flat)
        self._keeps_logits = any(p.keeps_logits() for p in flat)

    def members(self) -> list[Policy]:
        """The chained policies, in order."""
        return list(self._members)

    def keeps_logits(self) -> bool:
        return self._keeps_logits

    # The members directly, without the generic walk through the ModuleList (per-step cost).

    def check_call(self, num_classes: int, device: torch.device) -> None:
        for p in self._members:
            p.check_call(num_classes, device)

    def end_backward(self) -> None:
        for p in self._members:
            p.end_backward()

    @property
    def requires_targets(self) -> bool:  # type: ignore[override]
        return any(p.requires_targets for p in self.members())

    def expected_num_classes(self) -> int | None:
        for p in self.members():
            c = p.expected_num_classes()
            if c is not None:
                return c
        return None

    def attach_grad_scaler(self, scaler: object) -> Chain:
        super().attach_grad_scaler(scaler)
        for p in self.members():
            p.attach_grad_scaler(scaler)
        return self

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        # Consecutive linear policies are fused: their factors multiply on (C,)-sized vectors and
        # the product is applied once. An observer (EQLv2, the monitor) sees the gradient put out
        # so far; any other policy sees the fused gradient before it.
        pending: Multiplier | None = None
        for p in self._members:
            if isinstance(p, LinearPolicy):
                m = p.multiplier(grad, ctx)
                pending = m if pending is None else pending.combine(m)
                if p.observes_output:
                    grad = pending.apply(grad, ctx.targets)
                    p.observe(grad, ctx, pending)
                    pending = None
                continue
            if pending is not None:
                grad, pending = pending.apply(grad, ctx.targets), None
            grad = p.transform(grad, ctx)
        return grad if pending is None else pending.apply(grad, ctx.targets)


def _replaces(p: Policy) -> SurrogatePolicy | None:
    """The surrogate (gradient-replacing) policy in ``p`` (a Schedule may wrap one), if any."""
    return next((m for m in p.modules() if isinstance(m, SurrogatePolicy)), None)


def _keeps_plain_form(p: Policy, per_entry: bool) -> bool:
    """Whether ``p`` leaves the plain loss's gradient a scaled copy of itself.

    Row-wise scales (ignored samples, class weights of class-index labels, per-sample clipping,
    an observer) keep every form; entry-wise ones keep binary cross-entropy's (``per_entry``).
    """
    if isinstance(p, Schedule):
        return _keeps_plain_form(p.policy, per_entry)
    if isinstance(p, (MaskUnknown, ClassWeights, GradMonitor, ClipPerSample)):
        return True
    entry_wise = (PosNegWeights, Mask, FreezeClasses, EQL, EQLv2, ClipPerClass)
    return per_entry and isinstance(p, entry_wise)


def _check_replacing_order(flat: list[Policy]) -> None:
    """Refuse a surrogate policy that would not see the plain loss's gradient."""
    for i, p in enumerate(flat):
        surrogate = _replaces(p)
        if surrogate is None:
            continue
        name = type(surrogate).__name__
        for before in flat[:i]:
            if _replaces(before) is not None:
                raise ValueError(
                    f"chain: {name} and {type(_replaces(before)).__name__} both replace the "
                    "gradient (each assumes the plain loss's gradient): use one of them"
                )
            if not _keeps_plain_form(before, surrogate.per_entry_scale):
                raise ValueError(
                    f"chain: {name} replaces the gradient of the plain loss, so it must come "
                    f"first (after mask_unknown, class_weights or clip_per_sample at most), but "
                    f"{type(before).__name__} comes before it: move {name} to the front"
                )


def chain(*policies: Policy) -> Chain:
    """Apply ``policies`` one after the other to the gradient at the logits, in one gate.

    A policy that replaces the gradient (``logit_adjust``, ``ldam_drw``, ``seesaw``,
    ``asymmetric_focus``, ``labels_trick``) must see the plain loss's gradient: it comes first,
    after row-wise weights (``mask_unknown``, ``class_weights``, ``clip_per_sample``) at most
    (for ``asymmetric_focus``, whose scale is read entry by entry, after any weights), and at
    most one such policy is chained; anything else is refused here with a ValueError.

    Order matters where it should: ``chain(mask_unknown(), eqlv2(C))`` keeps unknown entries out
    of EQLv2's statistics, ``chain(class_weights(w), clip_per_class(1.0))`` clips after weighting.

    Example:
        >>> import torch, labelgrad as lg
        >>> policy = lg.chain(lg.mask_unknown(), lg.class_weights([1.0, 3.0]))
        >>> z = torch.zeros(1, 2, requires_grad=True)
        >>> policy(z, torch.tensor([[-1, 1]])).sum().backward()
        >>> z.grad.tolist()
        [[0.0, 3.0]]
    """
    return Chain(*policies)
