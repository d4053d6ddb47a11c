"""The optimizers :class:`labelgrad.RowRules` refuses to wrap, and why."""

from __future__ import annotations

import inspect

import torch

__all__ = ["refusal", "step_needs_closure"]

_ADAFACTOR = "its second moment of a matrix is factored into row and column statistics"


def refusal(optimizer: torch.optim.Optimizer) -> str | None:
    """Why :class:`labelgrad.RowRules` cannot honour its contract around ``optimizer``, or None.

    Refused: optimizers whose ``step`` needs a closure (LBFGS re-evaluates the model several
    times per step), and optimizers that couple the rows of a parameter, so that no row can be
    treated as its own parameter: Muon orthogonalises the whole matrix update, Adafactor
    factors the second moment of a matrix into row and column statistics.

    Example:
        >>> import torch
        >>> refusal(torch.optim.SGD([torch.zeros(1)], lr=0.1)) is None
        True
    """
    if step_needs_closure(optimizer):
        return (
            "its step() requires a closure (LBFGS-style optimizers re-evaluate the model "
            "several times per step); closure optimizers are not supported"
        )
    coupled = {"Muon": "orthogonalises the whole matrix update", "Adafactor": _ADAFACTOR}
    for cls in type(optimizer).__mro__:
        if cls.__module__.startswith("torch.optim") and cls.__name__ in coupled:
            return (
                f"it couples the rows of a parameter ({coupled[cls.__name__]}), so a row cannot "
                "be frozen or rescaled on its own; put the label-owned parameters in another "
                "optimizer (e.g. AdamW) and wrap that one"
            )
    return None


def step_needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """True where ``optimizer.step`` has a required ``closure`` argument (LBFGS)."""
    try:
        params = inspect.signature(optimizer.step).parameters
    except (TypeError, ValueError):  # builtins without a signature: assume the usual one
        return False
    closure = params.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty
