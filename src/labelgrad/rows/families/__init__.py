"""One registry of the optimizer families :class:`labelgrad.RowRules` knows, keyed by type.

Each module here holds everything about one family (as torch keeps everything about Adam in
``torch/optim/adam.py``): its weight-decay kind, whether its update is linear in lr, its
initial state, its fresh-row rule and its optional fast kernel, as one :class:`Family` per
optimizer type in the module's ``FAMILIES``. A fast path for a registered optimizer is one field
of its entry (``fast=``); a new family is one module and one line in :data:`REGISTRY`. An
optimizer that no entry names (by type or base class) goes through the exact snapshot path with
zero initial state.
"""

from __future__ import annotations

from typing import Any

import torch

from labelgrad.rows.families import (
    adagrad_family,
    adam_family,
    moment_families,
    rprop_family,
    sgd_family,
)
from labelgrad.rows.families.family import DecayKind, Family, FastKernel, FreshRule
from labelgrad.rows.families.refused import refusal, step_needs_closure

__all__ = [
    "REGISTRY",
    "DecayKind",
    "Family",
    "FastKernel",
    "FreshRule",
    "decay_kind",
    "family_of",
    "fast_kernel",
    "refusal",
    "step_needs_closure",
]

REGISTRY: dict[type[torch.optim.Optimizer], Family] = {
    **adam_family.FAMILIES,
    **sgd_family.FAMILIES,
    **adagrad_family.FAMILIES,
    **rprop_family.FAMILIES,
    **moment_families.FAMILIES,
}
"""Optimizer type -> its :class:`Family`."""

UNKNOWN = Family()
"""The family of an optimizer no entry names: unknown decay, not linear in lr, zero state."""


def family_of(optimizer: torch.optim.Optimizer) -> Family:
    """The family of ``optimizer``'s type or of its nearest registered base class.

    Example:
        >>> import torch
        >>> class MySGD(torch.optim.SGD): ...
        >>> family_of(MySGD([torch.zeros(1)], lr=0.1)) is REGISTRY[torch.optim.SGD]
        True
    """
    for cls in type(optimizer).__mro__:
        family = REGISTRY.get(cls)
        if family is not None:
            return family
    return UNKNOWN


def fast_kernel(optimizer: torch.optim.Optimizer) -> FastKernel | None:
    """The fast kernel registered for exactly ``type(optimizer)`` (a subclass may change
    ``step``, so it never inherits one), or None."""
    family = REGISTRY.get(type(optimizer))
    return None if family is None else family.fast


def decay_kind(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> DecayKind | None:
    """``"coupled"`` (L2 added to the gradient), ``"decoupled"`` (param *= 1 - lr * wd), or None
    where labelgrad does not know how ``optimizer`` applies weight decay."""
    if group.get("decoupled_weight_decay", False):
        return "decoupled"
    return family_of(optimizer).decay
