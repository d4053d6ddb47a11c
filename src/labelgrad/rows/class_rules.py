"""The per-class rules of :class:`labelgrad.RowRules`: frozen classes, lr scales, weight decay,
max-norm radii."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from labelgrad.rows._spec import class_mask, class_radii, class_values
from labelgrad.rows.families import Family, decay_kind
from labelgrad.rows.label_param import LabelParam
from labelgrad.rows.max_norm import is_projected, project, wide_dtype
from labelgrad.rows.snapshot import StepRules

__all__ = ["ClassRules", "on_device"]


class ClassRules:
    """Parsing, checking and access of the per-class rules, on the parameters' device.

    A mixin of :class:`labelgrad.RowRules`, which sets the attributes declared here.
    """

    num_classes: int
    optimizer: torch.optim.Optimizer
    _device: torch.device
    _family: Family
    _params: list[LabelParam]
    _frozen: Tensor
    _frozen_index: Tensor
    _lr_scale: Tensor | None
    _weight_decay: Tensor | None
    _max_norm: Tensor | None
    _projects: bool
    _lr_scale_cache: dict[torch.dtype, tuple[Tensor, Tensor]]
    _warned_state: set[str]
    skip_absent: bool

    if TYPE_CHECKING:

        def group_of(self, param: Tensor) -> dict[str, Any]:
            """The param group of the wrapped optimizer that holds ``param``."""
            raise NotImplementedError

    def _set_rules(
        self, frozen: object, lr_scale: object, weight_decay: object, max_norm: object
    ) -> None:
        """Parse and check the per-class rules onto the parameters' device."""
        c, optimizer = self.num_classes, self.optimizer
        self._set_frozen(class_mask(frozen, "frozen", c))
        self._lr_scale = on_device(class_values(lr_scale, "lr_scale", c), self._device)
        self._weight_decay = on_device(class_values(weight_decay, "weight_decay", c), self._device)
        self._set_max_norm(class_radii(max_norm, "max_norm", c))
        if self._lr_scale is not None and not self._family.linear_in_lr:
            warnings.warn(
                f"lr_scale scales the update of {type(optimizer).__name__}; that equals a "
                "smaller learning rate only for optimizers whose update is linear in lr",
                stacklevel=3,
            )
        if self._weight_decay is not None:
            for lp in self._params:
                if decay_kind(optimizer, self.group_of(lp.param)) is None:
                    raise TypeError(
                        f"weight_decay: per-class weight decay is not supported for "
                        f"{type(optimizer).__name__} (known: optimizers with L2 or decoupled "
                        "weight decay such as SGD, Adam, AdamW, RMSprop, Adagrad)"
                    )

    def _set_max_norm(self, radii: Tensor | None) -> None:
        if radii is not None:
            projected = [lp for lp in self._params if is_projected(lp)]
            if not projected:
                raise ValueError(
                    "max_norm: rows has no weight rows to project (MaxNorm acts on label-owned "
                    "tensors with more than one dimension; a bias is never projected)"
                )
            if any(hasattr(lp.param, "device_mesh") for lp in projected):
                raise TypeError("max_norm: DTensor (FSDP2) parameters are not supported")
        self._max_norm = None if radii is None else radii.to(self._device, wide_dtype(self._device))
        # Decided once, on the host: all radii infinite projects nothing and costs nothing.
        self._projects = radii is not None and bool(torch.isfinite(radii).any())

    def _project_moved(self, moving: Tensor | None, active: list[int]) -> None:
        """After the update: project the rows that moved (None: every row) of the stepped
        tensors (``active``) onto their max-norm balls."""
        if not self._projects:
            return
        assert self._max_norm is not None
        for i in active:
            if is_projected(self._params[i]):
                project(self._params[i], self._max_norm, moving)

    @property
    def max_norm(self) -> Tensor | None:
        """The (C,) float64 per-class max-norm radii of the weight rows, or None (a copy)."""
        return None if self._max_norm is None else self._max_norm.clone()

    @property
    def frozen(self) -> Tensor:
        """The (C,) bool mask of frozen classes (a copy)."""
        return self._frozen.clone()

    def freeze(self, classes: object) -> None:
        """Freeze the rows of ``classes`` from the next step on (their state is kept)."""
        self._set_frozen(self._frozen.cpu() | class_mask(classes, "classes", self.num_classes))

    def unfreeze(self, classes: object) -> None:
        """Let the rows of ``classes`` move again, resuming from their state before freezing."""
        self._set_frozen(self._frozen.cpu() & ~class_mask(classes, "classes", self.num_classes))

    def _set_frozen(self, mask: Tensor) -> None:
        self._frozen = mask.to(self._device)
        self._frozen_index = mask.nonzero().flatten().to(self._device)

    @property
    def lr_scale(self) -> Tensor | None:
        """The (C,) float64 per-class lr multipliers, or None."""
        return None if self._lr_scale is None else self._lr_scale.clone()

    @lr_scale.setter
    def lr_scale(self, value: object) -> None:
        self._lr_scale = on_device(class_values(value, "lr_scale", self.num_classes), self._device)

    @property
    def weight_decay(self) -> Tensor | None:
        """The (C,) float64 per-class weight decay, or None (the param group's)."""
        return None if self._weight_decay is None else self._weight_decay.clone()

    def _lr_scale_in(self, dtype: torch.dtype) -> Tensor | None:
        """``lr_scale`` in ``dtype``, converted once per value."""
        if self._lr_scale is None:
            return None
        cached = self._lr_scale_cache.get(dtype)
        if cached is None or cached[0] is not self._lr_scale:
            cached = (self._lr_scale, self._lr_scale.to(dtype))
            self._lr_scale_cache[dtype] = cached
        return cached[1]

    def _step_rules(self) -> StepRules:
        """This step's rules, for the snapshot path."""
        return StepRules(
            optimizer=self.optimizer,
            family=self._family,
            frozen_index=self._frozen_index,
            lr_scale=self._lr_scale,
            weight_decay=self._weight_decay,
            dynamic=self.skip_absent,
            warned=self._warned_state,
        )


def on_device(values: Tensor | None, device: torch.device) -> Tensor | None:
    """Per-class values as float64 on ``device`` (None stays None)."""
    return None if values is None else values.to(device, torch.float64)
