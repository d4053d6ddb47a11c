"""PCD: follow the primary gradient, guaranteeing each secondary a fraction of its progress."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.aggregators._state import resize_buffers_for_load
from labelgrad.aggregators.aggregator_types import GramianWeighting
from labelgrad.aggregators.diagnostics import SolverDiagnostics

__all__ = ["PCD", "pcd_certificate", "solve_pcd_dual"]

# A solution is accepted when its KKT residual is below this, relative to max_i G_ii (1 + |mu|_1).
CERTIFICATE_TOL = 1e-9


def pcd_certificate(gramian: Tensor, taus: Tensor, mu: Tensor) -> Tensor:
    r"""The KKT residual of multipliers ``mu`` (K - 1,) for PCD's problem on ``gramian`` (K, K).

    The problem: ``min_d ½|d - g_1|^2`` s.t. ``g_j · d >= τ_j |g_j|^2`` (j >= 2). At ``d = g_1 +
    sum_j μ_j g_j`` the slacks are ``s = G_{s,1} + G_{ss} μ - τ ⊙ diag(G_{ss})``; optimality is
    ``μ >= 0``, ``s >= 0`` and ``μ ⊙ s = 0``. Returned: the largest violation of these, divided by
    ``max_i G_ii (1 + |μ|_1)`` (the scale of the rounding error in ``s``); a 0-dim tensor.

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
        >>> float(pcd_certificate(G, torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.5])))
        0.0
    """
    mu = mu.to(gramian)
    slack = gramian[1:, 0] + gramian[1:, 1:] @ mu - taus * gramian.diagonal()[1:]
    parts = [mu.new_zeros(1), (-mu).clamp(min=0), (-slack).clamp(min=0)]
    violation = torch.cat([*parts, (mu.clamp(min=0) * slack).abs()]).amax()
    scale = gramian.diagonal().amax().clamp(min=torch.finfo(gramian.dtype).tiny)
    return violation / (scale * (1 + mu.abs().sum()))


def solve_pcd_dual(
    gramian: Tensor, taus: Tensor, *, dependence_tol: float = 1e-9
) -> tuple[Tensor, bool]:
    r"""PCD's multipliers ``μ`` (K - 1,) by a dual active-set method, on a float64 CPU Gramian.

    Goldfarb and Idnani's dual method (Math. Programming 27, 1983) for the identity Hessian, in
    Gramian terms: starting from ``d = g_1`` (``μ = 0``), repeatedly take the most violated
    constraint ``p`` and move ``μ_p`` up along ``z = g_p - sum_{j in A} r_j g_j`` (its component
    orthogonal to the active gradients), lowering the active ``μ_A`` by ``r`` per unit; a
    multiplier that reaches 0 leaves the active set first. Each step is read off the Gramian.
    Returns ``(μ, feasible)``; when the constraints cannot all hold (no step can remove a
    violation) it returns zeros and False. Iterations are bounded by ``10 K`` (a guard against
    rounding-induced cycling; the caller checks the answer with :func:`pcd_certificate`).

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
        >>> solve_pcd_dual(G, torch.tensor([0.0], dtype=torch.float64))
        (tensor([0.5000], dtype=torch.float64), True)
    """
    m = gramian.shape[0] - 1
    mu = torch.zeros(m, dtype=gramian.dtype)
    if m == 0:
        return mu, True
    h = gramian[1:, 1:]
    lower = taus * h.diagonal() - gramian[1:, 0]  # slack = h @ mu - lower
    atol = CERTIFICATE_TOL * max(float(gramian.diagonal().max()), 1e-300)
    active: list[int] = []
    for _ in range(10 * (m + 1)):
        slack = h @ mu - lower
        if active:
            slack[active] = 0.0
        p = int(slack.argmin())
        if float(slack[p]) >= -atol:
            return mu, True
        if not _add_constraint(h, lower, mu, active, p, dependence_tol):
            return torch.zeros_like(mu), False
    return mu, True  # iteration guard reached: the certificate decides


def _add_constraint(
    h: Tensor, lower: Tensor, mu: Tensor, active: list[int], p: int, dependence_tol: float
) -> bool:
    # Raise mu_p until constraint p holds, dropping active constraints whose multiplier hits 0.
    violation = float(lower[p] - h[p] @ mu)
    for _ in range(len(active) + 1):
        if active:
            r = torch.linalg.solve(h[active][:, active], h[active, p])
            z_sq = float(h[p, p] - h[p, active] @ r)
            mu_active = mu[active]
            ratios = torch.where(r > 0, mu_active / r, torch.inf)
            block = int(ratios.argmin())
            partial = float(ratios[block])
        else:
            r, z_sq, block, partial = h.new_zeros(0), float(h[p, p]), -1, float("inf")
        full = violation / z_sq if z_sq > dependence_tol * float(h[p, p]) else float("inf")
        step = min(partial, full)
        if step == float("inf"):
            return False  # g_p depends on the active gradients and nothing can be dropped
        if active:
            mu[active] = mu[active] - step * r
        mu[p] += step
        if full <= partial:
            active.append(p)
            return True
        mu[active[block]] = 0.0
        del active[block]
        violation = float(lower[p] - h[p] @ mu)
    return True


def _accelerated_projected_gradient(h: Tensor, lower: Tensor, iters: int) -> Tensor:
    # Cannot cycle; on an infeasible problem (unbounded dual) it runs off along a Farkas ray.
    step = 1.0 / max(float(torch.linalg.eigvalsh(h).max()), 1e-300)
    mu = torch.zeros_like(lower)
    y, t = mu.clone(), 1.0
    for _ in range(iters):
        new = (y - step * (h @ y - lower)).clamp(min=0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = new + ((t - 1) / t_next) * (new - mu)
        mu, t = new, t_next
    return mu


def _infeasible(h: Tensor, lower: Tensor, mu: Tensor) -> bool:
    # Farkas: v >= 0 with |sum_j v_j g_j| = sqrt(v^T h v) tiny but lower^T v > 0 means any
    # feasible d has |d| >= lower^T v / sqrt(v^T h v): beyond 1e4 x the scale, call it infeasible.
    v = mu / mu.sum().clamp(min=1e-300)
    gain = float(lower @ v)
    return gain > 0 and float(v @ h @ v).__abs__() ** 0.5 <= 1e-4 * gain


def _fallback(gramian: Tensor, taus: Tensor, iters: int = 2000) -> tuple[Tensor, bool]:
    # Robust fallback: accelerated projected gradient on the dual, then a primal-dual active-set
    # polish from its support (exact once the support is right). Returns (mu, feasible).
    h = gramian[1:, 1:]
    lower = taus * h.diagonal() - gramian[1:, 0]
    mu = ray = _accelerated_projected_gradient(h, lower, iters)
    best, best_res = mu, pcd_certificate(gramian, taus, mu)
    for _ in range(h.shape[0] + 1):
        if float(best_res) <= CERTIFICATE_TOL:
            return best, True
        free = (mu - (h @ mu - lower)) > 0  # semismooth Newton's guess of the positive set
        if not bool(free.any()):
            break
        mu = torch.zeros_like(mu)
        mu[free] = torch.linalg.lstsq(h[free][:, free], lower[free].unsqueeze(1)).solution[:, 0]
        res = pcd_certificate(gramian, taus, mu)
        if res < best_res:
            best, best_res = mu, res
    if float(best_res) > CERTIFICATE_TOL and _infeasible(h, lower, ray):
        return torch.zeros_like(best), False
    return best, True


class PCD(GramianWeighting):
    r"""Priority-Constrained Descent (Varam et al., `Not All Objectives Are Born Equal:
    Priority-Constrained Descent for Hierarchical Multi-Objective Optimization
    <https://openreview.net/forum?id=HT01yGHLEt>`_, TMLR 2026), as TorchJD 0.18's ``PCD``
    (defaults ``tau=0.02``, ``beta=0.999``, ``eps=1e-8``).

    Row 0 is the primary objective. With ``g̃_i = s_i g_i``, ``s_i = 1 / sqrt(v̂_i + eps)`` and
    ``v̂_i`` the bias-corrected EMA (decay ``beta``) of ``|g_i|^2`` over the calls, PCD solves
    ``d̃ = argmin_d ½|d - g̃_1|^2`` s.t. ``g̃_j · d >= τ_j |g̃_j|^2`` (j >= 2) and returns
    ``d̃`` rescaled to ``|g_1|`` as weights. Special cases as TorchJD: ``g_1 = 0`` or ``d̃ = 0``
    (up to the Gramian's rounding) give zero weights; infeasible constraints (possible from K = 3)
    are dropped (weights ``e_1``).

    Solver: the problem is K x K, so as TorchJD it is solved on the CPU in float64 (one transfer
    of the Gramian per call) by the dual active-set method :func:`solve_pcd_dual`; the answer is
    checked against the KKT conditions (:func:`pcd_certificate`, tolerance ``CERTIFICATE_TOL``
    relative to ``max G̃_ii (1 + |μ|_1)``) and, where the check fails, re-solved by accelerated
    projected gradient polished by primal-dual active-set steps, keeping the better certified
    of the two (or declaring the constraints infeasible when the gradient iterate is a Farkas ray:
    ``v >= 0`` with ``|sum_j v_j g̃_j| <= 1e-4 sum_j v_j b_j``). ``diagnostics``
    (:class:`~labelgrad.aggregators.SolverDiagnostics`, one problem per call with K >= 2 and a
    non-zero primary gradient) counts those fallbacks (also readable as ``fallbacks``) and the
    answers still uncertified after them.

    State, in buffers (``state_dict`` round-trips; restarted by :meth:`reset` or when K changes):
    ``sq_norm_ema`` (K,) float64 and the call count ``steps``; :meth:`reset` also zeroes
    ``diagnostics``. A non-finite Gramian (possible off
    the CPU, where it is not validated) gives NaN weights and leaves the state unchanged.

    Args:
        tau: fraction in [0, 1] of normalized progress guaranteed to each secondary objective; a
            float or a (K - 1,) tensor.
        beta: EMA decay in [0, 1).
        eps: added to the EMA before its inverse square root (>= 0), in the units of
            ``|g_i|^2`` as TorchJD: the weights for ``c G`` are those for ``G`` with
            ``eps / c`` (for gradients far below ``sqrt(eps)`` every ``s_i`` is the same).

    Example:
        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
        >>> w = PCD().weights(J @ J.T)
        >>> d = J.T @ w  # |d| = |g_1|, and the secondary gradient makes progress along d
        >>> round(float(d.norm()), 6), bool(J[1] @ d > 0)
        (1.0, True)
    """

    sq_norm_ema: Tensor
    steps: Tensor

    def __init__(
        self, *, tau: float | Tensor = 0.02, beta: float = 0.999, eps: float = 1e-8
    ) -> None:
        super().__init__()
        if isinstance(tau, Tensor):
            if tau.dim() != 1 or not bool(((tau >= 0) & (tau <= 1)).all()):
                raise ValueError("tau must be a float in [0, 1] or a 1-D tensor of such values")
            tau = tau.detach().to(device="cpu", dtype=torch.float64).clone()
        elif not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps!r}")
        self.tau = tau
        self.beta = float(beta)
        self.eps = float(eps)
        self.register_buffer("sq_norm_ema", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.diagnostics = SolverDiagnostics()

    @property
    def fallbacks(self) -> Tensor:
        """Calls whose fast solve failed the certificate: ``diagnostics.fallbacks``."""
        return self.diagnostics.fallbacks

    def reset(self) -> None:
        """Forget the moving average of the squared gradient norms; zero ``diagnostics``."""
        super().reset()
        self.sq_norm_ema = torch.zeros(0, dtype=torch.float64, device=self.steps.device)
        self.steps = torch.zeros((), dtype=torch.int64, device=self.steps.device)

    def _taus(self, k: int) -> Tensor:
        if isinstance(self.tau, Tensor):
            if self.tau.shape[0] != k - 1:
                raise ValueError(f"tau has {self.tau.shape[0]} entries, expected K - 1 = {k - 1}")
            return self.tau
        return torch.full((k - 1,), float(self.tau), dtype=torch.float64)

    def _scales(self, sq_norms: Tensor) -> Tensor:
        k = sq_norms.shape[0]
        fresh = self.sq_norm_ema.shape != (k,)
        ema = sq_norms.new_zeros(k) if fresh else self.sq_norm_ema.to(sq_norms)
        steps = 1 if fresh else int(self.steps) + 1
        ema = self.beta * ema + (1 - self.beta) * sq_norms
        self.sq_norm_ema = ema.to(self.steps.device)
        self.steps = torch.tensor(steps, device=self.steps.device)
        denominators = (ema / (1 - self.beta**steps) + self.eps).sqrt()
        return torch.where(denominators > 0, 1 / denominators, 0.0)

    def _solve(self, normalized: Tensor, taus: Tensor, dependence_tol: float) -> Tensor:
        mu, feasible = solve_pcd_dual(normalized, taus, dependence_tol=dependence_tol)
        failed = feasible and float(pcd_certificate(normalized, taus, mu)) > CERTIFICATE_TOL
        uncertified = 0
        if failed:
            other, feasible = _fallback(normalized, taus)
            if not feasible or pcd_certificate(normalized, taus, other) < pcd_certificate(
                normalized, taus, mu
            ):
                mu = other
            uncertified = int(
                feasible and float(pcd_certificate(normalized, taus, mu)) > CERTIFICATE_TOL
            )
        self.diagnostics.record(1, int(failed), uncertified)
        return torch.cat([mu.new_ones(1), mu.clamp(min=0)])

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        taus = self._taus(k)
        g = gramian.detach().to(device="cpu", dtype=torch.float64)  # the one transfer
        if not bool(g.isfinite().all()):
            self.diagnostics.record(0, 0)
            return torch.full((k,), torch.nan, dtype=gramian.dtype, device=gramian.device)
        sq_norms = g.diagonal()
        scales = self._scales(sq_norms)
        weights = torch.zeros(k, dtype=torch.float64)
        precision = 10.0 * torch.finfo(gramian.dtype).eps
        if float(sq_norms[0]) > 0:
            normalized = g * torch.outer(scales, scales)
            w = self._solve(normalized, taus, max(1e-9, precision))
            norm_sq = w @ normalized @ w
            rounding = (w.abs() @ normalized.diagonal().clamp(min=0).sqrt()) ** 2
            if float(norm_sq) > precision * float(rounding):
                weights = w * scales * (sq_norms[0] / norm_sq).sqrt()
        else:
            self.diagnostics.record(0, 0)  # g_1 = 0: zero weights, nothing to solve
        return weights.to(device=gramian.device, dtype=gramian.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints before 0.3 saved the fallback counter (now a run's diagnostic, not state).
        state_dict.pop(prefix + "fallbacks", None)
        resize_buffers_for_load(self, state_dict, prefix, ["sq_norm_ema"])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, beta={self.beta}, eps={self.eps}"
