"""Parsing and checking of the arguments of :class:`labelgrad.RowRules` (construction time only)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from labelgrad._validation import as_class_set, as_class_vector, as_count
from labelgrad.rows.families import refusal
from labelgrad.rows.label_param import LabelParam
from labelgrad.rows.wrapped import WrappedOptimizer

__all__ = [
    "RowsLike",
    "check_optimizer",
    "checked_rules_state",
    "class_mask",
    "class_radii",
    "class_values",
    "owned_device",
    "parse_rows",
]

RowsLike = nn.Module | Tensor | Sequence[object]
"""A Linear head, a parameter whose axis 0 is the class axis, or a list of such items and
``(param, class_dim)`` pairs."""


def _from_item(item: object) -> list[LabelParam]:
    if isinstance(item, nn.Linear):
        out = [LabelParam(item.weight, 0)]
        if item.bias is not None:
            out.append(LabelParam(item.bias, 0))
        return out
    if isinstance(item, Tensor):
        return [_checked(item, 0)]
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Tensor):
        param, class_dim = item
        if isinstance(class_dim, bool) or not isinstance(class_dim, int):
            raise TypeError(f"rows: class_dim must be an int, got {type(class_dim).__name__}")
        return [_checked(param, class_dim)]
    raise TypeError(
        "rows must be an nn.Linear, a parameter with its class axis at dim 0, or a list of "
        f"those and (param, class_dim) pairs; got {type(item).__name__}"
    )


def _checked(param: Tensor, class_dim: int) -> LabelParam:
    if param.dim() == 0:
        raise ValueError("rows: a label-owned parameter needs a class axis, got a 0-d tensor")
    if not -param.dim() <= class_dim < param.dim():
        raise ValueError(
            f"rows: class_dim={class_dim} is out of range for a parameter of shape "
            f"{tuple(param.shape)}"
        )
    if param.is_sparse:
        raise TypeError("rows: sparse parameters are not supported")
    return LabelParam(param, class_dim % param.dim())


def parse_rows(rows: RowsLike, num_classes: int | None) -> tuple[list[LabelParam], int]:
    """Return the label-owned parameters in ``rows`` and the number of classes they share."""
    if isinstance(rows, (nn.Module, Tensor)):
        items: list[object] = [rows]
    elif isinstance(rows, Iterable) and not isinstance(rows, (str, bytes)):
        items = list(rows)
    else:
        raise TypeError(
            "rows must be an nn.Linear, a parameter, or a list of (param, class_dim) pairs; "
            f"got {type(rows).__name__}"
        )
    if not items:
        raise ValueError("rows must name at least one label-owned parameter")
    if isinstance(rows, nn.Module) and not isinstance(rows, nn.Linear):
        raise TypeError(
            f"rows as a module must be an nn.Linear, got {type(rows).__name__}; pass "
            "[(param, class_dim), ...] for other layouts"
        )
    params = [lp for item in items for lp in _from_item(item)]
    seen: set[int] = set()
    for lp in params:
        if id(lp.param) in seen:
            raise ValueError("rows names the same parameter twice")
        seen.add(id(lp.param))
    sizes = {lp.param.shape[lp.class_dim] for lp in params}
    if num_classes is not None:
        as_count(num_classes, "num_classes")
        bad = [
            tuple(lp.param.shape) for lp in params if lp.param.shape[lp.class_dim] != num_classes
        ]
        if bad:
            raise ValueError(
                f"rows: the class axis of a parameter of shape {bad[0]} does not have "
                f"num_classes={num_classes} entries"
            )
    elif len(sizes) != 1:
        raise ValueError(
            f"rows: the label-owned parameters disagree on the number of classes {sorted(sizes)}; "
            "pass matching (param, class_dim) pairs"
        )
    return params, num_classes if num_classes is not None else sizes.pop()


def check_optimizer(optimizer: object) -> None:
    """Raise unless ``optimizer`` is a torch optimizer that :class:`labelgrad.RowRules` can
    wrap."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if isinstance(optimizer, WrappedOptimizer):
        raise TypeError("optimizer is already a RowRules; put all rows in one RowRules")
    reason = refusal(optimizer)
    if reason is not None:
        raise TypeError(f"optimizer: RowRules cannot wrap {type(optimizer).__name__}: {reason}")


def owned_device(optimizer: torch.optim.Optimizer, params: list[LabelParam]) -> torch.device:
    """The one device of ``params``; raise if one is not in ``optimizer`` or devices differ."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for lp in params:
        if id(lp.param) not in owned:
            raise ValueError(
                f"rows: a parameter of shape {tuple(lp.param.shape)} is not in the "
                "optimizer's param_groups"
            )
    devices = {lp.param.device for lp in params}
    if len(devices) != 1:
        raise ValueError(f"rows: label-owned parameters must share one device, got {devices}")
    return devices.pop()


def class_mask(classes: object, name: str, num_classes: int) -> Tensor:
    """A (C,) bool CPU mask from a set of class indices (``None`` -> all False)."""
    mask = torch.zeros(num_classes, dtype=torch.bool)
    if classes is not None:
        mask[as_class_set(classes, name, num_classes=num_classes)] = True
    return mask


def class_values(value: object, name: str, num_classes: int) -> Tensor | None:
    """A (C,) float64 CPU vector of finite non-negative per-class values (a scalar is broadcast
    on purpose: it means "every class"); ``None`` stays ``None``."""
    if value is None:
        return None
    checked = as_class_vector(value, name, num_classes=num_classes, allow_scalar=True)
    # as_class_vector checks in float32; keep the caller's precision for exact references.
    if isinstance(value, Tensor):
        exact = value.detach().to("cpu", torch.float64)
    elif isinstance(value, (int, float)):
        exact = torch.tensor(float(value), dtype=torch.float64)
    else:
        exact = torch.tensor([float(v) for v in value], dtype=torch.float64)  # type: ignore[attr-defined]
    if checked.dim() == 0 or exact.dim() == 0:
        exact = exact.reshape(()).expand(num_classes)
    if not all(math.isfinite(v) and v >= 0 for v in exact.tolist()):
        raise ValueError(f"{name} must be finite and non-negative")
    return exact.clone()


def class_radii(value: object, name: str, num_classes: int) -> Tensor | None:
    """A (C,) float64 CPU vector of per-class radii from a number or a (C,) tensor/sequence:
    non-negative, ``inf`` allowed (that class is never projected), NaN refused. A scalar is
    broadcast on purpose ("every class"); ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a (C,) tensor of radii, got bool")
    if isinstance(value, (int, float)):
        exact = torch.tensor(float(value), dtype=torch.float64)
    elif isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
        exact = value.detach().to("cpu", torch.float64)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = list(value)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
            raise TypeError(f"{name} must be a number or a sequence of numbers")
        exact = torch.tensor([float(v) for v in items], dtype=torch.float64)
    else:
        raise TypeError(
            f"{name} must be a number or a (C,) tensor of radii, got {type(value).__name__}"
        )
    if exact.dim() == 0:
        exact = exact.expand(num_classes)
    elif exact.dim() != 1 or exact.numel() != num_classes:
        raise ValueError(
            f"{name} must be a number or have shape ({num_classes},) (one radius per class), "
            f"got shape {tuple(exact.shape)}"
        )
    if bool(exact.isnan().any()) or bool((exact < 0).any()):
        raise ValueError(f"{name} must be non-negative (inf: no limit), got {exact.tolist()}")
    return exact.clone()


def checked_rules_state(
    rules: object, *, optimizer: str, num_classes: int, num_params: int
) -> dict[str, Any]:
    """Check the ``"row_rules"`` entry of a saved :class:`labelgrad.RowRules` state dict field by
    field (type, shape, range) and return it with CPU tensors; raise a one-line error naming
    the field otherwise. Nothing is broadcast: a wrong length is an error."""
    if not isinstance(rules, dict):
        raise ValueError(f"state_dict['row_rules'] must be a dict, got {type(rules).__name__}")
    saved_opt = rules.get("optimizer", optimizer)
    if saved_opt != optimizer:
        raise ValueError(
            f"state_dict: saved from a RowRules around {saved_opt}, this one wraps {optimizer}; "
            "load it into a RowRules around the same optimizer type"
        )
    saved_c = rules.get("num_classes")
    if saved_c != num_classes:
        raise ValueError(
            f"state_dict: saved for num_classes={saved_c!r}, this RowRules has "
            f"num_classes={num_classes}"
        )
    out: dict[str, Any] = {
        "frozen": _saved_mask(rules.get("frozen"), "frozen", (num_classes,)),
        "present": _saved_mask(rules.get("present"), "present", (num_classes,)),
        "lr_scale": _saved_values(rules.get("lr_scale"), "lr_scale", num_classes),
        "weight_decay": _saved_values(rules.get("weight_decay"), "weight_decay", num_classes),
        # Saved before 0.3: no max_norm existed.
        "max_norm": _saved_radii(rules.get("max_norm"), num_classes),
    }
    for key in ("skip_absent", "observed"):
        if not isinstance(rules.get(key), bool):
            raise ValueError(f"state_dict['row_rules'][{key!r}] must be a bool")
        out[key] = rules[key]
    started = rules.get("started")
    if isinstance(started, Tensor) and started.dim() == 2 and started.shape[0] != num_params:
        raise ValueError(
            f"state_dict['row_rules']['started'] was saved for {started.shape[0]} label-owned "
            f"parameters, this RowRules has {num_params}: build it with the same rows="
        )
    out["started"] = (
        None if started is None else _saved_mask(started, "started", (num_params, num_classes))
    )
    return out


def _saved_mask(value: object, name: str, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(value, Tensor) or value.dtype != torch.bool or value.shape != shape:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"state_dict['row_rules'][{name!r}] must be a bool tensor of shape {shape}, got {got}"
        )
    return value.detach().cpu()


def _saved_values(value: object, name: str, num_classes: int) -> Tensor | None:
    if value is None:
        return None
    if (
        not isinstance(value, Tensor)
        or not value.is_floating_point()
        or value.shape != (num_classes,)
    ):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"state_dict['row_rules'][{name!r}] must be a float tensor of shape "
            f"({num_classes},) or None, got {got}"
        )
    v = value.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
        raise ValueError(f"state_dict['row_rules'][{name!r}] must be finite and non-negative")
    return v


def _saved_radii(value: object, num_classes: int) -> Tensor | None:
    if value is None:
        return None
    if (
        not isinstance(value, Tensor)
        or not value.is_floating_point()
        or value.shape != (num_classes,)
    ):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            "state_dict['row_rules']['max_norm'] must be a float tensor of shape "
            f"({num_classes},) or None, got {got}"
        )
    v = value.detach().to("cpu", torch.float64)
    if bool(v.isnan().any()) or bool((v < 0).any()):
        raise ValueError("state_dict['row_rules']['max_norm'] must be non-negative (inf allowed)")
    return v
