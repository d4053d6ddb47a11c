"""Policies that multiply each gradient entry by a factor: fused into one pass in a chain.

Masks, class and positive/negative weights, freezing and EQLv2 all multiply entry (n, s, c) of
the gradient by a factor that does not depend on the gradient. Such a policy returns its factor
as a :class:`Multiplier`, kept factored (a keep mask, a per-class or per-sample scale, separate
factors for positive and negative entries); :class:`~labelgrad.Chain` multiplies the factors of
consecutive linear policies together on (C,)-sized vectors and applies the product to the
gradient once, instead of one full (N, S, C) pass per policy. A policy that reads the gradient it
puts out (EQLv2's statistics, the monitor) sets ``observes_output`` and sees the fused result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from labelgrad.policies._scalars import scalar
from labelgrad.policies.policy import GradContext, Policy
from labelgrad.targets import Targets

__all__ = ["LinearPolicy", "Multiplier"]


def _mul(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a * b


@dataclass(frozen=True)
class Multiplier:
    """A per-entry factor of the gradient (N, S, C), kept factored until it is applied.

    The factor of entry (n, s, c) is ``keep * scale * (pos if positive, neg if a known
    negative, 1 if unknown)``; a part that is None is 1. Tensors are in the gradient's dtype and
    on its device.

    Attributes:
        keep: bool (or 0/1 numbers of the gradient's dtype), broadcastable to (N, S, C): a 0/1
            factor, so a masked finite entry becomes an exact 0 and a masked inf or NaN becomes
            NaN (as autograd of the masked loss).
        scale: float, broadcastable to (N, S, C): a (C,) class vector or an (N, S, 1) per-sample
            factor.
        pos: (C,) or 0-d factor of positive entries; needs targets.
        neg: (C,) or 0-d factor of known negative entries; needs targets.
        masks_unknown: ``keep`` is False wherever ``targets.known`` is False (lets observers and
            the product skip the unknown entries).

    Example:
        >>> import torch, labelgrad as lg
        >>> from labelgrad.policies import Multiplier
        >>> y = torch.tensor([[1, 0, -1]])
        >>> t = lg.Targets.coerce(y, num_classes=3, encoding="multi_hot").class_last()
        >>> m = Multiplier(pos=torch.tensor(2.0), neg=torch.tensor(0.5))
        >>> m.apply(torch.ones(1, 1, 3), t).tolist()
        [[[2.0, 0.5, 1.0]]]
    """

    keep: Tensor | None = None
    scale: Tensor | None = None
    pos: Tensor | None = None
    neg: Tensor | None = None
    masks_unknown: bool = False

    def combine(self, other: Multiplier) -> Multiplier:
        """The product of two multipliers (entrywise), still factored."""
        keep = self.keep if other.keep is None else other.keep
        if self.keep is not None and other.keep is not None:
            keep = _keep_product(self.keep, other.keep)
        return Multiplier(
            keep=keep,
            scale=_mul(self.scale, other.scale),
            pos=_mul(self.pos, other.pos),
            neg=_mul(self.neg, other.neg),
            masks_unknown=self.masks_unknown or other.masks_unknown,
        )

    def apply(self, grad: Tensor, targets: Targets | None) -> Tensor:
        """Multiply ``grad`` (N, S, C) by this factor, with arithmetic only.

        Masks enter as 0/1 multipliers (a bool tensor viewed as uint8, no copy): a masked entry
        becomes an exact 0 when finite, NaN when it was inf or NaN (as autograd of the masked
        loss gives), so an overflow still reaches a GradScaler. ``torch.where`` on a bool
        condition costs about 25 times a multiplication on the CPU.
        """
        factor = self.scale
        keep = self.keep
        if self.pos is not None or self.neg is not None:
            if targets is None:
                raise ValueError("positive/negative weights read the labels: pass targets")
            factor, keep = self._pos_neg(targets, grad)
        if keep is not None:
            keep01 = _as_01(keep, targets, grad.dtype)
            factor = keep01 if factor is None else factor * keep01
        return grad if factor is None else grad * factor

    def _pos_neg(self, t: Targets, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        """The factor of the positive/negative weights, and the part of ``keep`` still to apply.

        When ``keep`` is exactly the mask of known entries (``mask_unknown``), it folds into the
        factor for free: negatives are known - positive (unknown entries are never positive),
        so unknown entries get 0 without a pass of their own.
        """
        one = scalar(1.0, grad)
        pos = one if self.pos is None else self.pos
        neg = one if self.neg is None else self.neg
        scale = self.scale
        if scale is not None and scale.dim() <= 1:
            # A class vector folds into the (C,) factors: no extra (N, S, C) pass.
            pos, neg, scale = pos * scale, neg * scale, None
        is_pos = t.mask_as("positive", grad.dtype)
        keep = self.keep
        if self.masks_unknown and keep is not None and _is_known_mask(keep, t):
            is_neg = torch.sub(t.mask_as("known", grad.dtype), is_pos)
            keep = None
        elif self.masks_unknown:
            is_neg = torch.sub(one, is_pos)  # unknown entries are masked anyway
        else:
            is_neg = t.mask_as("known", grad.dtype) - is_pos
        # Exactly one term of each entry is nonzero: the factor is pos, neg (or rest) exactly.
        factor = torch.addcmul(is_pos * pos, is_neg, neg)
        if not self.masks_unknown:  # unknown entries keep the class scale (or 1)
            rest = one if self.scale is None or scale is not None else self.scale
            factor = torch.addcmul(factor, torch.sub(one, t.mask_as("known", grad.dtype)), rest)
        return (factor if scale is None else factor * scale), keep


def _is_known_mask(keep: Tensor, t: Targets) -> bool:
    """Whether ``keep`` is the targets' mask of known entries (bool, or a cached 0/1 mask)."""
    masks: dict[tuple[str, torch.dtype], Tensor] = t._masks  # type: ignore[attr-defined]
    return keep is t._known or keep is masks.get(("known", keep.dtype))


def _keep_product(a: Tensor, b: Tensor) -> Tensor:
    """The product of two keep masks: ``&`` of bool ones, else a product of 0/1 numbers."""
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    a01 = a.view(torch.uint8) if a.dtype == torch.bool else a
    b01 = b.view(torch.uint8) if b.dtype == torch.bool else b
    return a01 * b01


def _as_01(mask: Tensor, targets: Targets | None, dtype: torch.dtype) -> Tensor:
    """A bool mask as 0/1 numbers: the targets' cached conversion for ``known``, else uint8."""
    if targets is not None and mask is targets._known:
        return targets.mask_as("known", dtype)
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


class LinearPolicy(Policy):
    """A policy that multiplies each gradient entry by a factor that the gradient does not set.

    Subclasses implement :meth:`multiplier`; ``transform`` applies it. In a
    :class:`~labelgrad.Chain`, consecutive linear policies are fused: their multipliers are
    combined and applied in one pass. Set ``observes_output = True`` and implement
    :meth:`observe` to read the gradient put out (after this policy and the linear policies
    before it in a chain), e.g. to update statistics.

    Example:
        >>> import torch, labelgrad as lg
        >>> from labelgrad.policies import LinearPolicy, Multiplier
        >>> class Double(LinearPolicy):
        ...     requires_targets = False
        ...     def multiplier(self, grad, ctx):
        ...         return Multiplier(scale=torch.full((), 2.0, dtype=grad.dtype))
        >>> z = torch.zeros(1, 2, requires_grad=True)
        >>> lg.chain(Double(), Double())(z).sum().backward()
        >>> z.grad.tolist()
        [[4.0, 4.0]]
    """

    observes_output: ClassVar[bool] = False

    def multiplier(self, grad: Tensor, ctx: GradContext) -> Multiplier:
        """This policy's factor for the gradient ``grad`` (N, S, C) (read for dtype and device)."""
        raise NotImplementedError

    def observe(self, out: Tensor, ctx: GradContext, applied: Multiplier) -> None:
        """Read the gradient put out, ``out`` (N, S, C); ``applied`` is the factor it carries."""

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        m = self.multiplier(grad, ctx)
        out = m.apply(grad, ctx.targets)
        if self.observes_output:
            self.observe(out, ctx, m)
        return out


def like(t: Tensor, grad: Tensor) -> Tensor:
    """``t`` in ``grad``'s dtype and on its device (no operator when it already is).

    Example:
        >>> import torch
        >>> like(torch.ones(2), torch.zeros(1, dtype=torch.float64)).dtype
        torch.float64
    """
    if t.dtype == grad.dtype and t.device == grad.device:
        return t
    return t.to(device=grad.device, dtype=grad.dtype)
