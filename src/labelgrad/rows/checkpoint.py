"""Checkpoints of :class:`labelgrad.RowRules`: the wrapped optimizer's state dict plus the rules,
the present-class window and which rows have started, every field checked on load.

Two kinds of rules: those a training run changes through the API (``frozen`` by ``freeze`` and
``unfreeze``, ``lr_scale`` by its setter) are state and are restored from the checkpoint; those
fixed at construction (:data:`FIXED_RULES`) must match, or loading is refused, so that a
checkpoint never silently replaces what the constructor was given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from labelgrad.rows._spec import checked_rules_state
from labelgrad.rows.class_rules import on_device
from labelgrad.rows.label_param import LabelParam
from labelgrad.rows.observer import ClassWindow
from labelgrad.rows.started import StartedRows

__all__ = ["FIXED_RULES", "RESTORED_RULES", "RowRulesCheckpoint"]

RESTORED_RULES = ("frozen", "lr_scale")
"""Rules that change during training: ``load_state_dict`` restores them from the checkpoint."""

FIXED_RULES = ("skip_absent", "weight_decay", "max_norm")
"""Rules fixed at construction: ``load_state_dict`` refuses a checkpoint saved with others."""


class RowRulesCheckpoint:
    """``state_dict`` and ``load_state_dict``; a mixin of :class:`labelgrad.RowRules`, which sets
    the attributes declared here."""

    optimizer: torch.optim.Optimizer
    num_classes: int
    skip_absent: bool
    _device: torch.device
    _params: list[LabelParam]
    _frozen: Tensor
    _lr_scale: Tensor | None
    _weight_decay: Tensor | None
    _max_norm: Tensor | None
    _window: ClassWindow
    _started: StartedRows

    if TYPE_CHECKING:

        def _set_frozen(self, mask: Tensor) -> None:
            raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict, plus the rules and the present-class window under
        the key ``"row_rules"``."""
        sd = dict(self.optimizer.state_dict())
        sd["row_rules"] = {
            "optimizer": type(self.optimizer).__name__,
            "num_classes": self.num_classes,
            "frozen": self._frozen.cpu(),
            "lr_scale": None if self._lr_scale is None else self._lr_scale.cpu(),
            "weight_decay": None if self._weight_decay is None else self._weight_decay.cpu(),
            "skip_absent": self.skip_absent,
            "max_norm": None if self._max_norm is None else self._max_norm.cpu(),
            "present": self._window.present().cpu(),
            "observed": self._window.observed,
            "started": torch.stack(self._started.masks).cpu(),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (or a plain optimizer state dict).

        Every field of the rules is checked (type, shape, range) before anything is loaded.
        ``frozen`` and ``lr_scale``, which change during training (``freeze``, ``unfreeze``, the
        ``lr_scale`` setter), are restored from the checkpoint and replace this RowRules' own;
        ``skip_absent``, ``weight_decay`` and ``max_norm`` are fixed at construction and must
        equal the saved ones. A plain optimizer state dict leaves every rule as it is.

        Raises:
            ValueError: the state dict was saved from a RowRules around another optimizer type,
                for another number of classes or label-owned parameters, with another
                ``skip_absent``, ``weight_decay`` or ``max_norm``, or a field is malformed.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        sd = dict(state_dict)
        rules = sd.pop("row_rules", None)
        if rules is None:
            self.optimizer.load_state_dict(sd)
            # A plain optimizer's state: every row of a tensor with state has moved.
            self._started.set([bool(self.optimizer.state.get(lp.param)) for lp in self._params])
            return
        r = checked_rules_state(
            rules,
            optimizer=type(self.optimizer).__name__,
            num_classes=self.num_classes,
            num_params=len(self._params),
        )
        self._check_fixed_rules(r)
        self.optimizer.load_state_dict(sd)
        self._set_frozen(r["frozen"])
        self._lr_scale = on_device(r["lr_scale"], self._device)
        assert self._window.mask is not None
        self._window.mask.copy_(r["present"])
        self._window.observed = r["observed"]
        started = r["started"]
        rows: list[Any] = []
        for i, lp in enumerate(self._params):
            if started is None:  # saved before 0.2: rows of a tensor with state have moved
                rows.append(bool(self.optimizer.state.get(lp.param)))
            else:
                rows.append(started[i])
        self._started.set(rows)

    def _check_fixed_rules(self, saved: dict[str, Any]) -> None:
        """Raise naming the first rule of :data:`FIXED_RULES` whose saved value differs."""
        mine = {
            "skip_absent": self.skip_absent,
            "weight_decay": self._weight_decay,
            "max_norm": self._max_norm,
        }
        for name in FIXED_RULES:
            if not _same(saved[name], mine[name]):
                raise ValueError(
                    f"state_dict: saved with {name}={_show(saved[name])}, this RowRules has "
                    f"{name}={_show(mine[name])}; {name} is fixed at construction: build the "
                    "RowRules with the saved value to resume"
                )


def _same(a: object, b: object) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.equal(a.cpu().double(), b.cpu().double())
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False  # one is None
    return a == b


def _show(value: object) -> str:
    if not isinstance(value, Tensor):
        return repr(value)
    values = value.tolist()
    return str(values) if len(values) <= 6 else f"[{', '.join(map(str, values[:6]))}, ...]"
