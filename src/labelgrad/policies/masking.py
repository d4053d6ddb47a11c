"""Policies that zero the gradient of some entries of the logits."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from labelgrad._validation import as_class_set, as_count
from labelgrad.policies.linear import LinearPolicy, Multiplier
from labelgrad.policies.policy import GradContext
from labelgrad.targets import Targets

__all__ = ["FreezeClasses", "Mask", "MaskUnknown", "freeze_classes", "mask", "mask_unknown"]

KeepFn = Callable[[Targets], Tensor]


class Mask(LinearPolicy):
    """Zero the gradient where ``keep`` is False. Built by :func:`mask`."""

    keep: Tensor

    def __init__(self, keep: Tensor | KeepFn) -> None:
        super().__init__()
        self._keep_fn: KeepFn | None = None
        if callable(keep) and not isinstance(keep, Tensor):
            self._keep_fn = keep
        else:
            keep = torch.as_tensor(keep)
            if keep.dtype != torch.bool or keep.dim() != 1:
                raise ValueError(
                    "keep must be a (C,) bool tensor or a callable Targets -> bool tensor of "
                    f"the logits' shape; got dtype {keep.dtype} and shape {tuple(keep.shape)}"
                )
            self.register_buffer("keep", keep.clone())

    # A keep vector needs no labels; a callable does.
    @property
    def requires_targets(self) -> bool:  # type: ignore[override]
        return self._keep_fn is not None

    def expected_num_classes(self) -> int | None:
        return None if self._keep_fn is not None else int(self.keep.numel())

    def multiplier(self, grad: Tensor, ctx: GradContext) -> Multiplier:
        if self._keep_fn is None:
            # Moved like the other policies' vectors: a policy need not be .to()'d with the model.
            keep = self.keep if self.keep.device == grad.device else self.keep.to(grad.device)
            return Multiplier(keep=keep)
        t = ctx.require_targets(self)
        keep = self._keep_fn(t)
        keep_obj: object = keep
        if not isinstance(keep_obj, Tensor) or keep.dtype != torch.bool or keep.shape != grad.shape:
            got = (
                f"dtype {keep.dtype} and shape {tuple(keep.shape)}"
                if isinstance(keep_obj, Tensor)
                else type(keep_obj).__name__
            )
            raise ValueError(
                "mask's keep callable must return a bool tensor shaped like targets.positive "
                f"{tuple(grad.shape)}; got {got}"
            )
        return Multiplier(keep=keep)


def mask(keep: Tensor | KeepFn) -> Mask:
    """Zero the gradient of the entries where ``keep`` is False.

    Args:
        keep: a (C,) bool vector (classes to keep), or a callable that takes the batch's
            :class:`~labelgrad.Targets` and returns a bool tensor shaped like ``targets.positive``.
            The callable sees targets in the (N, S, C) layout of :meth:`Policy.transform`.

    Returns:
        The policy.

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(2, 3, requires_grad=True)
        >>> lg.mask(torch.tensor([True, False, True]))(z).sum().backward()
        >>> z.grad.tolist()
        [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]
    """
    return Mask(keep)


class MaskUnknown(LinearPolicy):
    """Zero the gradient where the label is unknown or ignored. Built by :func:`mask_unknown`."""

    def multiplier(self, grad: Tensor, ctx: GradContext) -> Multiplier:
        # The 0/1 mask the label checks made (Targets.mask_as): no bool mask, no cast.
        known = ctx.require_targets(self).mask_as("known", grad.dtype)
        return Multiplier(keep=known, masks_unknown=True)


def mask_unknown() -> MaskUnknown:
    """Zero the gradient wherever ``targets.known`` is False.

    With class indices and ``ignore_index`` the whole sample (every class) is dropped, as
    ``CrossEntropyLoss(ignore_index=...)`` does; with partial multi-hot labels (-1 = unknown) only
    the unknown entries.

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(1, 3, requires_grad=True)
        >>> lg.mask_unknown()(z, torch.tensor([[1, -1, 0]])).sum().backward()
        >>> z.grad.tolist()
        [[1.0, 0.0, 1.0]]
    """
    return MaskUnknown()


class FreezeClasses(LinearPolicy):
    """Zero the gradient of the given classes for all samples. Built by :func:`freeze_classes`."""

    classes: Tensor

    requires_targets = False

    def __init__(self, classes: Iterable[int] | Tensor, num_classes: int | None = None) -> None:
        super().__init__()
        if num_classes is not None:
            as_count(num_classes, "num_classes")
        if isinstance(classes, Tensor) and classes.dtype == torch.bool:
            # A bool mask fixes C: its length is checked against num_classes and the logits.
            if classes.dim() != 1:
                raise ValueError(
                    f"classes as a bool mask must have shape (C,), got {tuple(classes.shape)}"
                )
            num_classes = classes.numel() if num_classes is None else num_classes
        idx = as_class_set(classes, "classes", num_classes=num_classes)
        self.num_classes = num_classes
        # The largest index, read once here (on the CPU): each call checks it against the
        # logits' class axis from metadata, before the backward pass could fail.
        self._max_class = int(idx.max()) if idx.numel() else -1
        self.register_buffer("classes", idx)
        self.register_load_state_dict_post_hook(_refresh_max_class)

    def expected_num_classes(self) -> int | None:
        return self.num_classes

    def check_call(self, num_classes: int, device: torch.device) -> None:
        if self._max_class >= num_classes:
            raise ValueError(
                f"freeze_classes got class {self._max_class}, out of range for logits with "
                f"{num_classes} classes (valid: 0..{num_classes - 1})"
            )
        super().check_call(num_classes, device)

    def multiplier(self, grad: Tensor, ctx: GradContext) -> Multiplier:
        c = grad.shape[-1]
        frozen = torch.zeros(c, dtype=torch.bool, device=grad.device)
        # index_fill has no data-dependent shape: no sync (the range was checked at the call).
        keep = ~frozen.index_fill(0, self.classes.to(grad.device), True)
        return Multiplier(keep=keep)


def _refresh_max_class(module: object, _: object) -> None:
    """After load_state_dict: the checked bound follows the loaded classes (read on load)."""
    assert isinstance(module, FreezeClasses)
    module._max_class = int(module.classes.max()) if module.classes.numel() else -1


def freeze_classes(
    classes: Iterable[int] | Tensor, num_classes: int | None = None
) -> FreezeClasses:
    """Zero the gradient of every class in ``classes``, for all samples.

    Note that this stops the gradient only; to keep the classifier rows of those classes
    bitwise still under momentum, Adam or weight decay, use :class:`labelgrad.RowRules`.

    Args:
        classes: class indices (ints, an integer tensor, or a (C,) bool mask).
        num_classes: optional; checks the indices and the logits against it.

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(1, 3, requires_grad=True)
        >>> lg.freeze_classes([0, 2])(z).sum().backward()
        >>> z.grad.tolist()
        [[0.0, 1.0, 0.0]]
    """
    return FreezeClasses(classes, num_classes)
