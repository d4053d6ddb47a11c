"""Nash-MTL and FairGrad: weights solving ``G w = w^{-1/α}`` (a bargaining balance), by Newton."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.aggregators._qp import min_norm_point, should_check
from labelgrad.aggregators.aggregator_types import GramianWeighting
from labelgrad.aggregators.diagnostics import SolverDiagnostics

__all__ = ["FairGrad", "NashMTL", "balance_residual", "solve_balance"]

#: Certificate tolerance of :func:`solve_balance`: relative residual of ``G w = w^{-p}``.
BALANCE_TOL = 1e-8


def _live_system(gramian: Tensor) -> tuple[Tensor, Tensor]:
    """float64 G with identity rows/columns for the dead coordinates (zero gradients)."""
    g = gramian.to(torch.float64)
    k = g.shape[0]
    diag = g.diagonal()
    dead = diag <= 1e-12 * diag.sum().clamp(min=torch.finfo(torch.float64).tiny)
    live = ~dead
    eye = torch.eye(k, dtype=torch.float64, device=g.device)
    return torch.where(live.unsqueeze(0) & live.unsqueeze(1), g, eye * dead), dead


def _cold_start(g: Tensor, power: float) -> Tensor:
    # Scale the all-ones start so that 1^T G 1 s^2 = K s^{1-p}: the right overall size.
    k = g.shape[0]
    ones = torch.ones(k, dtype=torch.float64, device=g.device)
    quad = (ones @ g @ ones).clamp(min=torch.finfo(torch.float64).tiny)
    return ones * (k / quad) ** (1.0 / (1.0 + power))


def balance_residual(gramian: Tensor, power: float, w: Tensor) -> Tensor:
    """The certificate of :func:`solve_balance`: ``|G w - w^{-p}| / |w^{-p}|`` on live rows.

    Zero exactly at the solution; NaN or inf when ``w`` is not positive and finite (so that any
    ``<= tol`` check fails).

    Example:
        >>> import torch
        >>> balance_residual(torch.eye(2), 1.0, torch.ones(2))
        tensor(0., dtype=torch.float64)
    """
    g, dead = _live_system(gramian)
    w = w.to(torch.float64)
    target = torch.where(dead, torch.ones_like(w), w.pow(-power))
    residual = (g @ w - target).norm() / target.norm().clamp(min=torch.finfo(torch.float64).tiny)
    bad = ~(w > 0).all() | ~w.isfinite().all()
    return torch.where(bad, torch.full_like(residual, torch.nan), residual)


def _newton(g: Tensor, dead: Tensor, power: float, w: Tensor, iters: int, rtol: float) -> Tensor:
    """Damped Newton with a fraction-to-the-boundary step (the fast path; no line search)."""
    for it in range(1, iters + 1):
        target = torch.where(dead, torch.ones_like(w), w.pow(-power))
        residual = g @ w - target
        slope = torch.where(dead, torch.zeros_like(w), power * w.pow(-power - 1))
        step, _ = torch.linalg.solve_ex(g + torch.diag(slope), residual)  # no error-check sync
        # Largest t <= 1 with w - t step >= w / 10 (stay well inside w > 0).
        ratio = torch.where(step > 0, 0.9 * w / step, torch.full_like(w, torch.inf))
        w = w - ratio.min().clamp(max=1.0) * step
        if should_check(g.device, it) and bool(
            residual.norm() <= rtol * target.norm().clamp(min=torch.finfo(torch.float64).tiny)
        ):
            break
    return w


def _newton_line_search(g: Tensor, dead: Tensor, power: float, w: Tensor, iters: int) -> Tensor:
    """The robust fallback: Newton with Armijo backtracking on the convex potential ``φ``.

    Globally convergent whenever ``φ`` has a minimizer (the equation a solution); runs on host
    scalars (a rare path).
    """
    live = (~dead).to(torch.float64)

    def potential(x: Tensor) -> float:
        h = x.log() if power == 1 else x.pow(1 - power) / (1 - power)
        return float(x @ g @ x / 2 - (h * live).sum())

    value = potential(w)
    for _ in range(iters):
        target = torch.where(dead, torch.ones_like(w), w.pow(-power))
        residual = g @ w - target
        slope = torch.where(dead, torch.zeros_like(w), power * w.pow(-power - 1))
        step, info = torch.linalg.solve_ex(g + torch.diag(slope), residual)
        if int(info) != 0 or not bool(step.isfinite().all()):
            break
        ratio = torch.where(step > 0, 0.9 * w / step, torch.full_like(w, torch.inf))
        t = min(1.0, float(ratio.min()))
        decrease = float(residual @ step)
        while t > 1e-14:
            candidate = w - t * step
            new_value = potential(candidate)
            if new_value <= value - 1e-4 * t * decrease:
                break
            t /= 2
        else:
            break
        w, value = candidate, new_value
    return w


def solve_balance(
    gramian: Tensor,
    power: float,
    *,
    start: Tensor | None = None,
    max_iters: int = 100,
    rtol: float = 1e-10,
    tol: float = BALANCE_TOL,
    diagnostics: SolverDiagnostics | None = None,
) -> Tensor:
    r"""Solve ``G w = w^{-p}`` for ``w > 0`` (``p > 0``), certified, on G's device.

    The solution is the minimizer of the strictly convex
    ``φ(w) = w^T G w / 2 - sum_i h(w_i)`` with ``h' = w^{-p}`` (``h = log`` for ``p = 1``), so
    Newton's method with a fraction-to-the-boundary step (``w`` stays positive) converges
    quadratically near it; it iterates until the relative residual is below ``rtol`` (checked
    every iteration on CPU, every 10 elsewhere) or ``max_iters``. Coordinates with a zero
    gradient (``G_ii <= 1e-12 trace(G)``) have no finite solution; they are held at 1 (their
    weight does not change the update ``J^T w``). Computed in float64.

    Certified: the answer's relative residual (:func:`balance_residual`) must be at most ``tol``
    (default 1e-8). Where it is not, Newton with an Armijo line search on ``φ`` (globally
    convergent when a solution exists) restarts from the cold start. A solution exists exactly
    when no non-negative combination of the live gradients is zero; when 0 is in their convex
    hull (e.g. two opposite gradients: the gradients are Pareto-stationary) ``φ`` has no
    minimizer, and the answer is ``w = 0`` (no update, documented; never NaN). So is it when the
    answer rounded to G's dtype conflicts (``G w < 0`` somewhere: nearly stationary gradients in
    float32). Reading the verdict is one host read (free on CPU; a sync elsewhere).

    Example:
        >>> import torch
        >>> solve_balance(torch.diag(torch.tensor([1.0, 4.0])), 1.0)
        tensor([1.0000, 0.5000])
    """
    dtype = gramian.dtype
    g, dead = _live_system(gramian)
    cold = _cold_start(g, power)
    w = cold if start is None else start.to(device=g.device, dtype=torch.float64)
    w = torch.where(dead, torch.ones_like(w), torch.where(w > 0, w, cold))
    w = _newton(g, dead, power, w, max_iters, rtol)
    failed = not bool(balance_residual(gramian, power, w) <= tol)
    if failed:
        w = _newton_line_search(g, dead, power, torch.where(dead, 1.0, cold), 4 * max_iters)
    # In the caller's dtype the rounded answer must still be non-conflicting (G w = w^{-p} > 0).
    rounded = w.to(dtype).to(torch.float64)
    conflicting = bool(((g @ rounded) < 0).any()) if dtype != torch.float64 else False
    uncertified = 0
    if conflicting or not bool(balance_residual(gramian, power, w) <= tol):
        failed = True
        # No solution within tolerance (or none representable in ``dtype``): w = 0, certified
        # only if 0 is (numerically) in the hull of the live gradients.
        live = gramian.to(torch.float64) * (~dead).unsqueeze(0) * (~dead).unsqueeze(1)
        ridge = max(1e-10, 10 * live.shape[0] * torch.finfo(dtype).eps)  # G's own rounding
        mix = min_norm_point(live + torch.diag(dead.to(torch.float64)), ridge=ridge)
        bound = 1e-6 * float(live.diagonal().max()) + 10 * ridge * float(live.trace())
        uncertified = int(not float(mix @ live @ mix) <= bound)
        w = torch.zeros_like(w)
    if diagnostics is not None:
        diagnostics.record(1, int(failed), uncertified)
    return w.to(dtype)


class NashMTL(GramianWeighting):
    r"""Nash-MTL (Navon et al., `Multi-Task Learning as a Bargaining Game
    <https://arxiv.org/abs/2202.01017>`_, Algorithm 1), solved exactly on the Gramian.

    The bargaining solution is ``α > 0`` with ``Ĝ α = 1/α``, ``Ĝ = G / |G|_F`` (TorchJD 0.18's
    normalization; its ``α`` is returned in that scale). TorchJD (after the official code)
    approximates it by up to 20 convex programs (cvxpy/ECOS, stopping at residual 1e-3); here
    :func:`solve_balance` finds it by Newton to relative residual 1e-10, so the two agree to
    TorchJD's own tolerance. Then, as there, if ``|J^T α| = sqrt(α^T G α) > max_norm`` (and
    ``max_norm > 0``) ``α`` is rescaled to norm ``max_norm``. Zero gradients get weight 1 before
    scaling (TorchJD's cvxpy fails there). Certified (:func:`solve_balance`: residual <= 1e-8,
    else a line-search Newton restart; ``diagnostics`` counts them). When 0 is in the convex hull
    of the gradients (e.g. ``g_1 = -g_2``: Pareto-stationary) no bargaining solution exists and
    the weights are 0 (no update; never NaN). With ``update_weights_every = n`` the solve runs
    every n-th call and the other calls reuse the last ``α`` (rescaled for the new G).

    Stateful: the last ``α`` (warm start, reuse) is the ``last_weights`` buffer and the call
    counter the ``calls`` buffer; both round-trip through ``state_dict``.

    Args:
        max_norm: cap on the update's norm (0 disables it).
        update_weights_every: solve every this many calls.

    Example:
        >>> import torch
        >>> NashMTL().weights(torch.diag(torch.tensor([1.0, 1.0])) / 4)
        tensor([1.1892, 1.1892])
    """

    last_weights: Tensor
    calls: Tensor

    def __init__(self, *, max_norm: float = 1.0, update_weights_every: int = 1) -> None:
        super().__init__()
        if max_norm < 0:
            raise ValueError(f"max_norm must be non-negative, got {max_norm!r}")
        if update_weights_every < 1:
            raise ValueError(
                f"update_weights_every must be a positive integer, got {update_weights_every!r}"
            )
        self.max_norm = float(max_norm)
        self.update_weights_every = int(update_weights_every)
        self.register_buffer("last_weights", torch.zeros(0))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.diagnostics = SolverDiagnostics()
        # A host copy of ``calls``: deciding whether to re-solve must not read the device.
        self._count = 0

    def reset(self) -> None:
        """Forget the last weights and the call counter (and zero ``diagnostics``)."""
        super().reset()
        self.last_weights = torch.zeros(0, device=self.last_weights.device)
        self.calls.zero_()
        self._count = 0

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        fresh = self.last_weights.shape != (k,)
        count = self._count
        if fresh or count % self.update_weights_every == 0:
            # |G|_F, computed on G / max|G_ij| so that the squares neither under- nor overflow.
            top = gramian.abs().amax().clamp(min=torch.finfo(gramian.dtype).tiny)
            norm = (top * torch.linalg.matrix_norm(gramian / top)).clamp(min=top)
            start = None if fresh else self.last_weights
            alpha = solve_balance(gramian / norm, 1.0, start=start, diagnostics=self.diagnostics)
            self.last_weights = alpha.detach()
        else:
            alpha = self.last_weights.to(device=gramian.device, dtype=gramian.dtype)
        self._count = count + 1
        self.calls.fill_(self._count)
        if self.max_norm > 0:
            update_norm = (alpha @ gramian @ alpha).clamp(min=0).sqrt()
            alpha = torch.where(
                update_norm > self.max_norm, alpha / update_norm * self.max_norm, alpha
            )
        return alpha

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        saved = state_dict.get(prefix + "last_weights")
        if isinstance(saved, Tensor):
            self.last_weights = torch.zeros_like(saved, device=self.last_weights.device)
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._count = int(self.calls.item())

    def extra_repr(self) -> str:
        return f"max_norm={self.max_norm}, update_weights_every={self.update_weights_every}"


class FairGrad(GramianWeighting):
    r"""FairGrad (Ban & Ji, `Fair Resource Allocation in Multi-Task Learning
    <https://arxiv.org/abs/2402.15638>`_, Equation 4): α-fair weights solving
    ``G w = w^{-1/α}``, ``w > 0``.

    ``α = 0`` is linear scalarization (``w = 1/K``, as TorchJD 0.18); ``α = 1`` is proportional
    fairness (the Nash-MTL equation on the raw G); larger ``α`` moves towards max-min fairness.
    TorchJD solves the equation with ``scipy.optimize.least_squares`` (bounded, default
    tolerances ~1e-8); here :func:`solve_balance` by Newton to relative residual 1e-10. TorchJD
    has no default for ``α``; ours is 1.0 (the official code's default, proportional fairness).
    Zero gradients get weight 1. Certified as :func:`solve_balance` (residual <= 1e-8, else a
    line-search Newton restart; ``diagnostics`` counts them); when 0 is in the convex hull of the
    gradients (Pareto-stationary) no solution exists and the weights are 0 (no update).

    Args:
        alpha: the fairness parameter (>= 0).

    Example:
        >>> import torch
        >>> FairGrad().weights(torch.diag(torch.tensor([1.0, 4.0])))
        tensor([1.0000, 0.5000])
    """

    def __init__(self, *, alpha: float = 1.0) -> None:
        super().__init__()
        if not alpha >= 0:
            raise ValueError(f"alpha must be non-negative, got {alpha!r}")
        self.alpha = float(alpha)
        self.diagnostics = SolverDiagnostics()

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        if self.alpha == 0:
            return torch.full((k,), 1.0 / k, dtype=gramian.dtype, device=gramian.device)
        return solve_balance(gramian, 1.0 / self.alpha, diagnostics=self.diagnostics)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
