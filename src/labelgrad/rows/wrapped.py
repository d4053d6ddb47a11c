"""An optimizer that is another optimizer in everything but ``step``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["WrappedOptimizer"]


class WrappedOptimizer(torch.optim.Optimizer):
    """``param_groups``, ``state``, ``defaults``, ``zero_grad``, ``add_param_group`` and the step
    hooks are those of ``self.optimizer``, so that LR schedulers, ``GradScaler`` and checkpoints
    see the wrapped optimizer. Subclasses set ``self.optimizer`` and define ``step``.

    Deliberately no ``Optimizer.__init__``: nothing of the wrapper's own is an optimizer's state.
    """

    optimizer: torch.optim.Optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's param groups."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        """The wrapped optimizer's state."""
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        """The wrapped optimizer's defaults."""
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) the gradients of every parameter of the wrapped optimizer."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to the wrapped optimizer."""
        self.optimizer.add_param_group(param_group)

    def register_step_pre_hook(self, hook: Any) -> Any:
        """Register a step pre-hook on the wrapped optimizer (it receives that optimizer)."""
        return self.optimizer.register_step_pre_hook(hook)

    def register_step_post_hook(self, hook: Any) -> Any:
        """Register a step post-hook on the wrapped optimizer (it receives that optimizer)."""
        return self.optimizer.register_step_post_hook(hook)

    def group_of(self, param: Tensor) -> dict[str, Any]:
        """The param group of the wrapped optimizer that holds ``param``."""
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(
            f"rows: a parameter of shape {tuple(param.shape)} is no longer in the optimizer"
        )

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
