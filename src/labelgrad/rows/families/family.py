"""The record of what :class:`labelgrad.RowRules` knows about one optimizer family.

Everything about one family lives in one module of :mod:`labelgrad.rows.families` (as torch keeps
everything about Adam in ``torch/optim/adam.py``) and is described by one :class:`Family`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from labelgrad.rows.label_param import LabelParam

__all__ = [
    "DecayKind",
    "Family",
    "FastKernel",
    "FreshRule",
    "gather_rows",
    "moving_rows",
    "plain_dense",
    "scalar",
    "zero_initial",
]

DecayKind = Literal["coupled", "decoupled"]
Group = dict[str, Any]


def zero_initial(group: Group, key: str) -> float | Tensor | None:
    """The initial value of every state tensor of most torch optimizers (moments, averages)."""
    return 0.0


@dataclass(frozen=True)
class FreshRule:
    """What a row that starts moving late needs beyond the state it kept while resting.

    Attributes:
        applies: whether the rule is needed for a param group (SGD: only with momentum).
        first_step: where the first update of a new parameter is not the optimizer's recurrence
            applied to its initial state (SGD's momentum buffer starts as the gradient):
            ``first_step(group, param, grad) -> (new_param, {state_key: new_state})``, a copy
            computed with torch's own update. None where the initial state suffices (Rprop).
    """

    applies: Callable[[Group], bool]
    first_step: Callable[[Group, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]] | None = None


class FastKernel(Protocol):
    """labelgrad's own step of a label-owned tensor with per-row coefficients: the update of the
    optimizer, with resting rows (factor 0 or 1) that keep their bits, state included."""

    def supports(self, group: Group, param: Tensor) -> bool:
        """Whether the kernel reproduces the optimizer on ``param`` in ``group``."""
        ...

    def coefficients(
        self,
        group: Group,
        dtype: torch.dtype,
        moving: Tensor | None,
        lr_scale: Tensor | None,
        fresh: Tensor | None,
    ) -> Any:
        """The per-row factors of one step (shared by the tensors of one group and dtype)."""
        ...

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        group: Group,
        lp: LabelParam,
        coef: Any,
        *,
        weight_decay: Tensor | None,
        lr_scale: Tensor | None,
    ) -> None:
        """Step ``lp.param`` and its state in ``optimizer.state`` in place."""
        ...


@dataclass(frozen=True)
class Family:
    """What :class:`labelgrad.RowRules` needs to know about one optimizer type.

    Attributes:
        decay: how the optimizer applies ``weight_decay`` (``"coupled"``: L2 added to the
            gradient, ``"decoupled"``: ``param *= 1 - lr * wd``), None where unknown (per-class
            weight decay is then refused). A group with ``decoupled_weight_decay=True`` is
            decoupled whatever this says.
        linear_in_lr: the update is lr times a quantity that does not depend on lr (state
            included), so that scaling the update by s equals stepping with lr * s.
        initial_state: the value torch gives state ``key`` of a new parameter, or None for
            state created from the first gradient (see :class:`FreshRule`).
        fresh: the rule for rows that start moving late, where the resting state is not enough.
        fast: labelgrad's own kernel for the label-owned tensors, or None (snapshot path). It is
            used for this exact type only, never for a subclass (which may change ``step``).

    Example:
        >>> import torch
        >>> from labelgrad.rows.families import family_of
        >>> family_of(torch.optim.AdamW([torch.zeros(1)])).decay
        'decoupled'
    """

    decay: DecayKind | None = None
    linear_in_lr: bool = False
    initial_state: Callable[[Group, str], float | Tensor | None] = zero_initial
    fresh: FreshRule | None = None
    fast: FastKernel | None = None

    def tracks_fresh(self, group: Group) -> bool:
        """True where a row's first move needs more than the state it kept while resting."""
        return self.fresh is not None and self.fresh.applies(group)

    def needs_first_step(self, group: Group) -> bool:
        """True where a row's first update is not the recurrence on its initial state."""
        return (
            self.tracks_fresh(group)
            and self.fresh is not None
            and self.fresh.first_step is not None
        )


def plain_dense(group: Group, param: Tensor) -> bool:
    """The conditions every fast kernel needs: a real dense gradient, no capturable or
    differentiable group (their updates are written for CUDA graphs and autograd), a float32 or
    float64 parameter (the per-row coefficients live in its dtype: float16 and bfloat16 would
    round momentum and lr, and float16 flushes Adam's ``eps * sqrt(1 - beta2**t)`` to 0, a 0/0
    in resting rows; the snapshot path is exact there)."""
    grad = param.grad
    return not (
        param.element_size() < 4
        or group.get("capturable", False)
        or group.get("differentiable", False)
        or param.is_complex()
        or grad is None
        or grad.is_sparse
    )


# Gather when at most this share of the rows moves: a gather and a scatter cost about as much as
# the masked passes they replace when half the rows move. 0 turns gathering off (every device
# then steps as an accelerator does).
GATHER_SHARE = 0.5


def moving_rows(moving: Tensor) -> Tensor | None:
    """The indices of the rows that move, where a kernel should step those rows alone, or None
    (step every row, with factors that keep resting rows still).

    Gathering needs the number of moving rows, which on an accelerator is a host read: only CPU
    masks are gathered. A kernel that gathers never reads or writes a resting row.

    Example:
        >>> moving_rows(torch.tensor([True, False, False, False, True]))
        tensor([0, 4])
        >>> moving_rows(torch.tensor([True, True, False])) is None
        True
    """
    if moving.device.type != "cpu" or GATHER_SHARE <= 0:
        return None
    index = moving.nonzero().squeeze(1)
    return index if index.numel() <= GATHER_SHARE * moving.numel() else None


def gather_rows(tensor: Tensor, dim: int, index: Tensor) -> Tensor:
    """A copy of the slices ``index`` of ``tensor`` along ``dim`` (advanced indexing along the
    first axis: fewer operators than ``index_select`` on a matrix)."""
    return tensor[index] if dim == 0 and tensor.dim() > 1 else tensor.index_select(dim, index)


@functools.lru_cache(maxsize=64)
def _scalar(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(value, dtype=dtype, device=device)


def scalar(value: float, like: Tensor) -> Tensor | float:
    """``value`` as a cached 0-d tensor of ``like``'s dtype and device, for in-place arithmetic.

    ``t.mul_(0.9)`` converts the Python float to ``t``'s dtype on every call (four operators
    more); for float32 and float64 a 0-d tensor of that dtype holds the same rounded value, so
    the result has the same bits. Other dtypes get the float back: half precision computes with
    a float32 scalar, which a 0-d half tensor would round (0.999 is 1.0 in bfloat16). Read only:
    never modify the returned tensor.

    Example:
        >>> t = torch.ones(2)
        >>> torch.equal(t.mul(scalar(0.9, t)), t.mul(0.9))
        True
        >>> scalar(0.999, t.bfloat16())
        0.999
    """
    if like.dtype not in (torch.float32, torch.float64):
        return float(value)
    return _scalar(float(value), like.dtype, like.device)
