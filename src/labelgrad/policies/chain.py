"""Compose policies into one gate."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labelgrad.policies.base import GradContext, Policy
from labelgrad.policies.linear import LinearPolicy, Multiplier

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


def chain(*policies: Policy) -> Chain:
    """Apply ``policies`` one after the other to the gradient at the logits, in one gate.

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
