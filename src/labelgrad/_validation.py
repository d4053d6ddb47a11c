"""Argument checks shared by the public constructors (run once, off the hot path)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["as_class_set", "as_class_vector", "as_count", "as_nonnegative_scalar"]


def as_nonnegative_scalar(value: object, name: str, *, positive: bool = False) -> float:
    """Return ``value`` as a finite float >= 0 (> 0 with ``positive``), or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    # math.isfinite, not torch.isfinite(torch.tensor(v)): that rounds to the default dtype, so
    # a finite 1e39 became inf in float32 and was refused as "not finite".
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a finite {kind} number, got {value!r}")
    return v


def as_count(value: object, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an int >= ``minimum`` (0 or 1), or raise naming ``name``.

    bool is refused although it is an int (``num_classes=True`` is a mistake, not 1).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "positive" if minimum >= 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} int, got {value!r}")
    return value


def as_class_vector(
    value: object,
    name: str,
    *,
    num_classes: int | None = None,
    allow_scalar: bool = False,
    keep_dtype: bool = False,
) -> Tensor:
    """Return ``value`` as a finite, non-negative float vector (C,), or raise naming ``name``.

    Scalars are accepted with ``allow_scalar`` and returned as 0-d tensors. Vectors are never
    broadcast: a length that differs from ``num_classes`` is an error. The result is float32,
    or with ``keep_dtype`` the floating dtype given (as ``CrossEntropyLoss(weight=)`` keeps it;
    integer values and Python numbers become torch's default float dtype).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not allow_scalar:
            raise TypeError(f"{name} must be a 1-D tensor or sequence of per-class values")
        as_nonnegative_scalar(value, name)
        dtype = torch.get_default_dtype() if keep_dtype else torch.float32
        return torch.tensor(float(value), dtype=dtype)
    if isinstance(value, Tensor):
        t = value.detach()
    elif isinstance(value, Sequence):
        t = torch.as_tensor(list(value))
    else:
        raise TypeError(
            f"{name} must be a 1-D tensor or a sequence of numbers, got {type(value).__name__}"
        )
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.dim() == 0 and allow_scalar:
        pass
    elif t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of shape (C,), got shape {tuple(t.shape)}")
    elif t.numel() == 0:
        raise ValueError(f"{name} must have one entry per class (C >= 1), got an empty vector")
    elif num_classes is not None and t.numel() != num_classes:
        raise ValueError(
            f"{name} has {t.numel()} entries but there are num_classes={num_classes} classes"
        )
    if not keep_dtype:
        t = t.to(torch.float32)
    elif not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative")
    return t.clone()


def as_class_set(classes: object, name: str, *, num_classes: int | None = None) -> Tensor:
    """Return a set of class indices as a sorted, unique int64 vector, or raise naming ``name``.

    Accepts an iterable of ints, an integer tensor of indices (0-D or 1-D: a 2-D index is refused,
    not flattened), or a bool mask of length C.
    """
    if isinstance(classes, Tensor):
        t = classes.detach().cpu()
        if t.dim() > 1:
            raise ValueError(
                f"{name} must be a 1-D tensor of class indices (or a (C,) bool mask), "
                f"got shape {tuple(t.shape)}"
            )
        if t.dtype == torch.bool:
            if t.dim() != 1 or (num_classes is not None and t.numel() != num_classes):
                raise ValueError(
                    f"{name} as a bool mask must have shape ({num_classes},), got {tuple(t.shape)}"
                )
            t = t.nonzero().flatten()
        elif t.is_floating_point() or t.is_complex():
            raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}")
        t = t.flatten().long()
    elif isinstance(classes, Iterable) and not isinstance(classes, (str, bytes)):
        items = list(classes)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise TypeError(f"{name} must hold int class indices, got {item!r}")
        t = torch.tensor(items, dtype=torch.long)
    else:
        raise TypeError(f"{name} must be an iterable of class indices or a tensor")
    if t.numel() and (
        int(t.min()) < 0 or (num_classes is not None and int(t.max()) >= num_classes)
    ):
        bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise ValueError(f"{name} holds class indices out of range (valid: {bound})")
    unique: Tensor = torch.unique(t)
    return unique
