"""ExcessMTL: exponentiated-gradient task weights driven by excess-risk estimates (stateful)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.aggregators._state import resize_buffers_for_load
from labelgrad.aggregators.aggregator_types import JacobianAggregator

__all__ = ["ExcessMTL"]

_STATE = ("sq_grad_sum", "task_weights", "baseline", "warmup_sum", "steps")


class ExcessMTL(JacobianAggregator):
    r"""ExcessMTL (He et al., `Robust Multi-Task Learning with Excess Risks
    <https://proceedings.mlr.press/v235/he24n.html>`_, ICML 2024), as TorchJD 0.18's
    ``ExcessMTL`` (defaults ``robust_step_size=1``, ``n_warmup_steps=0``).

    Every call adds ``J ⊙ J`` to the running sum ``S`` (K, P) and estimates each task's excess
    risk as ``e_i = sum_p J_ip^2 / sqrt(S_ip + 1e-7)`` (Equations 6-7, an AdaGrad-style diagonal
    Hessian). During the first ``n_warmup_steps`` calls the weights stay uniform and the ``e`` are
    averaged into the baseline; after that ``e`` is divided by ``baseline + 1e-7`` (with no warmup
    the first call's ``e`` is the baseline and is used unscaled) and the weights take an
    exponentiated-gradient step ``w <- softmax(log w + η e)`` (Equation 9). The update is
    ``J^T w`` (weights on the simplex: mean scale). It needs the Jacobian (the statistics are
    per coordinate).

    State, in buffers (``state_dict`` round-trips; restarted by :meth:`reset` or when the
    Jacobian's shape changes): ``sq_grad_sum`` (K, P), ``task_weights``, ``baseline``,
    ``warmup_sum`` (K,) and the call count ``steps``. ``sq_grad_sum`` is as large as J itself (K
    times the shared parameters). No host read: the warmup branches are ``torch.where`` on the
    device.

    Args:
        robust_step_size: the step size ``η`` of the weight update (> 0).
        n_warmup_steps: calls with uniform weights that set the baseline (>= 0).

    Example:
        >>> import torch
        >>> agg = ExcessMTL()
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
        >>> agg.aggregate(J)
        tensor([0.1192, 2.6424])
        >>> agg.task_weights  # softmax(log(1/2) + e), e = (1, 3) with no warmup
        tensor([0.1192, 0.8808])
    """

    sq_grad_sum: Tensor
    task_weights: Tensor
    baseline: Tensor
    warmup_sum: Tensor
    steps: Tensor

    def __init__(self, *, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        super().__init__()
        if not robust_step_size > 0:
            raise ValueError(f"robust_step_size must be positive, got {robust_step_size!r}")
        if (
            isinstance(n_warmup_steps, bool)
            or not isinstance(n_warmup_steps, int)
            or n_warmup_steps < 0
        ):
            raise ValueError(f"n_warmup_steps must be an integer >= 0, got {n_warmup_steps!r}")
        self.robust_step_size = float(robust_step_size)
        self.n_warmup_steps = n_warmup_steps
        for name in _STATE:
            self.register_buffer(name, torch.zeros(0))

    def reset(self) -> None:
        """Forget every statistic: the next call starts from uniform weights (and warms up)."""
        super().reset()
        for name in _STATE:
            setattr(self, name, torch.zeros(0, device=getattr(self, name).device))

    def _ensure_state(self, jacobian: Tensor) -> None:
        if self.sq_grad_sum.shape == jacobian.shape and self.steps.dim() == 0:
            return
        k = jacobian.shape[0]
        self.sq_grad_sum = torch.zeros_like(jacobian)
        self.task_weights = jacobian.new_full((k,), 1.0 / k)
        self.baseline = jacobian.new_zeros(k)
        self.warmup_sum = jacobian.new_zeros(k)
        self.steps = torch.zeros((), dtype=torch.int64, device=jacobian.device)

    def _aggregate(self, jacobian: Tensor, /) -> Tensor:
        self._ensure_state(jacobian)
        sq = jacobian * jacobian
        self.sq_grad_sum = self.sq_grad_sum.to(jacobian) + sq
        risk = (sq / (self.sq_grad_sum + 1e-7).sqrt()).sum(dim=1)
        n = self.n_warmup_steps
        in_warmup = self.steps < n
        first = self.steps == n  # the first call after the warmup fixes the baseline
        self.warmup_sum = self.warmup_sum.to(risk) + torch.where(in_warmup, risk, 0.0)
        start = self.warmup_sum / n if n > 0 else risk
        self.baseline = torch.where(first, start, self.baseline.to(risk))
        scaled = risk / (self.baseline + 1e-7)
        if n == 0:
            scaled = torch.where(first, risk, scaled)
        weights = self.task_weights.to(risk)
        stepped = torch.softmax(weights.log() + self.robust_step_size * scaled, dim=0)
        self.task_weights = torch.where(in_warmup, weights, stepped)
        self.steps = self.steps + 1
        return self.task_weights @ jacobian

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        resize_buffers_for_load(self, state_dict, prefix, _STATE)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"robust_step_size={self.robust_step_size}, n_warmup_steps={self.n_warmup_steps}"
