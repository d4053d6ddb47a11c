"""Switch a policy on and off by training step (e.g. deferred re-weighting)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from labelgrad._validation import as_count
from labelgrad.policies.policy import GradContext, Policy

__all__ = ["Schedule", "schedule"]


class Schedule(Policy):
    """Apply ``policy`` only on steps ``start_step <= step < end_step``. Built by :func:`schedule`.

    The step counter ``num_steps`` is an int64 buffer (saved in ``state_dict``) that counts the
    backward passes through the policy (not those run under :func:`labelgrad.no_state_update`).
    """

    num_steps: Tensor
    _updates_state: ClassVar[bool] = True  # the step counter changes in backward

    def __init__(self, policy: Policy, start_step: int = 0, end_step: int | None = None) -> None:
        super().__init__()
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be a labelgrad Policy, got {type(policy).__name__}")
        as_count(start_step, "start_step", minimum=0)
        if end_step is not None:
            as_count(end_step, "end_step", minimum=0)
        if end_step is not None and end_step < start_step:
            raise ValueError(
                f"end_step={end_step} must not be smaller than start_step={start_step}"
            )
        self.policy = policy
        self.start_step = start_step
        self.end_step = end_step
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    @property
    def requires_targets(self) -> bool:  # type: ignore[override]
        return self.policy.requires_targets

    def expected_num_classes(self) -> int | None:
        return self.policy.expected_num_classes()

    def extra_repr(self) -> str:
        return f"start_step={self.start_step}, end_step={self.end_step}"

    def attach_grad_scaler(self, scaler: object) -> Schedule:
        super().attach_grad_scaler(scaler)
        self.policy.attach_grad_scaler(scaler)
        return self

    def set_step(self, step: int) -> None:
        """Set the step counter, e.g. to count optimizer steps under gradient accumulation."""
        self.num_steps.fill_(as_count(step, "step", minimum=0))

    def reset(self) -> None:
        """Set the step counter back to 0 and reset the scheduled policy."""
        self.num_steps.zero_()
        super().reset()

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        step = self.num_steps.clone()
        active = step >= self.start_step
        if self.end_step is not None:
            active = active & (step < self.end_step)
        # Both branches on the device, selected without a host sync. A stateful inner policy
        # therefore keeps collecting statistics while switched off (a warm start).
        out = torch.where(active, self.policy.transform(grad, ctx), grad)
        if ctx.update_state:
            self.num_steps.add_(1)
        return out


def schedule(policy: Policy, start_step: int = 0, end_step: int | None = None) -> Schedule:
    """Apply ``policy`` only from ``start_step`` (inclusive) to ``end_step`` (exclusive).

    Steps are backward passes through the policy (with gradient accumulation, one per
    micro-batch; use :meth:`Schedule.set_step` to count differently). Deferred re-weighting
    (Cao et al., 2019) is ``schedule(class_weights(w), start_step=...)``.

    Example:
        >>> import torch, labelgrad as lg
        >>> drw = lg.schedule(lg.class_weights([2.0, 2.0]), start_step=1)
        >>> for _ in range(2):
        ...     z = torch.zeros(1, 2, requires_grad=True)
        ...     drw(z, torch.tensor([0])).sum().backward()
        ...     print(z.grad.tolist())
        [[1.0, 1.0]]
        [[2.0, 2.0]]
    """
    return Schedule(policy, start_step, end_step)
