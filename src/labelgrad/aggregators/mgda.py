"""MGDA: the minimum-norm point of the convex hull of the gradients (Frank-Wolfe)."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators._qp import min_norm_point, should_check
from labelgrad.aggregators.aggregator_types import GramianWeighting
from labelgrad.aggregators.diagnostics import SolverDiagnostics

__all__ = ["MGDA"]


class MGDA(GramianWeighting):
    r"""MGDA (Désidéri 2012), solved as in Sener & Koltun, `Multi-Task Learning as
    Multi-Objective Optimization <https://arxiv.org/abs/1810.04650>`_, Algorithm 2.

    ``w = argmin_{w in simplex} w^T G w`` by Frank-Wolfe from ``w = 1/K``: pick
    ``t = argmin_i (G w)_i``, line-search ``γ`` exactly on the segment to ``e_t``, stop once
    ``γ < epsilon`` or after ``max_iters`` steps — TorchJD 0.18's solver and defaults, step for
    step (so the result is its, not the exact minimizer: Frank-Wolfe's gap after ``max_iters``
    steps is the tolerance). On CPU the line search runs on host scalars (fewer ops); on
    accelerators it stays on the device, the stop is a mask and the flag is read every 10
    iterations (one sync each).

    Certified: the Frank-Wolfe gap ``w^T G w - min_i (G w)_i`` (an upper bound on
    ``w^T G w - min_simplex``) must be at most ``2 epsilon max_i G_ii`` (the scale of TorchJD's
    stopping rule, met by every Frank-Wolfe answer we tried); where it is not (``max_iters``
    reached on a hard Gramian), the exact minimizer replaces the answer
    (:func:`~labelgrad.aggregators._qp.min_norm_point`, an LCP solved in float64).
    ``diagnostics`` counts the fallbacks.

    Args:
        epsilon: the step size below which the iteration stops.
        max_iters: the most Frank-Wolfe steps.

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
        >>> MGDA().weights(G)
        tensor([0.8000, 0.2000])
    """

    def __init__(self, *, epsilon: float = 0.001, max_iters: int = 100) -> None:
        super().__init__()
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        if max_iters < 1:
            raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}")
        self.epsilon = float(epsilon)
        self.max_iters = int(max_iters)
        self.diagnostics = SolverDiagnostics()

    def _weights(self, gramian: Tensor, /) -> Tensor:
        if gramian.device.type == "cpu":
            alpha = self._weights_on_host(gramian)
        else:
            alpha = self._weights_on_device(gramian)
        return self._certify(alpha, gramian)

    def _certify(self, alpha: Tensor, gramian: Tensor) -> Tensor:
        """Frank-Wolfe gap check; the exact min-norm point where it fails (one host read)."""
        g_alpha = gramian @ alpha
        gap = alpha @ g_alpha - g_alpha.min()
        bound = 2 * self.epsilon * gramian.diagonal().max().clamp(min=0)
        failed = not bool(gap <= bound)  # NaN fails too
        uncertified: Tensor | int = 0
        if failed:
            alpha = min_norm_point(gramian)
            g_alpha = gramian.to(torch.float64) @ alpha.to(torch.float64)
            exact_gap = alpha.to(torch.float64) @ g_alpha - g_alpha.min()
            uncertified = (~(exact_gap <= bound)).to(torch.int64)
        self.diagnostics.record(1, int(failed), uncertified)
        return alpha

    def _weights_on_device(self, gramian: Tensor) -> Tensor:
        k = gramian.shape[0]
        alpha = torch.full((k,), 1.0 / k, dtype=gramian.dtype, device=gramian.device)
        done = torch.zeros((), dtype=torch.bool, device=gramian.device)
        one = torch.ones((), dtype=gramian.dtype, device=gramian.device)
        zero = torch.zeros((), dtype=gramian.dtype, device=gramian.device)
        for it in range(1, self.max_iters + 1):
            g_alpha = gramian @ alpha
            t = torch.argmin(g_alpha)
            column = gramian[:, t]
            a = alpha @ column
            b = alpha @ g_alpha
            c = gramian[t, t]
            gamma = torch.where(c <= a, one, torch.where(b <= a, zero, (b - a) / (b + c - 2 * a)))
            gamma = torch.where(done, zero, gamma)
            alpha = (1 - gamma) * alpha
            alpha = alpha.index_add(0, t.unsqueeze(0), gamma.unsqueeze(0))
            done = done | (gamma < self.epsilon)
            if should_check(gramian.device, it) and bool(done):
                break
        return alpha

    def _weights_on_host(self, gramian: Tensor) -> Tensor:
        # On CPU, scalars are free to read: the line search runs on Python floats (fewer ops).
        k = gramian.shape[0]
        alpha = torch.full((k,), 1.0 / k, dtype=gramian.dtype)
        diag = gramian.diagonal().tolist()
        for _ in range(self.max_iters):
            g_alpha = gramian @ alpha
            t = int(torch.argmin(g_alpha))
            a = float(alpha @ gramian[:, t])
            b = float(alpha @ g_alpha)
            c = diag[t]
            if c <= a:
                gamma = 1.0
            elif b <= a:
                gamma = 0.0
            else:
                gamma = (b - a) / (b + c - 2 * a)
            alpha = alpha * (1 - gamma)
            alpha[t] += gamma
            if gamma < self.epsilon:
                break
        return alpha

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, max_iters={self.max_iters}"
