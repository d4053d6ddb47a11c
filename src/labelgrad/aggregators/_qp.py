"""Batched solvers for the small QPs behind the weightings (pure torch, on G's device)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["normalize_gramian", "project_to_dual_cone", "regularize_gramian", "should_check"]


def normalize_gramian(gramian: Tensor, eps: float) -> Tensor:
    """``G / trace(G)`` (zeros when ``trace(G) < eps``), TorchJD's ``normalize``; no host sync."""
    trace = gramian.diagonal().sum()
    normalized: Tensor = torch.where(trace < eps, torch.zeros_like(gramian), gramian / trace)
    return normalized


def regularize_gramian(gramian: Tensor, eps: float) -> Tensor:
    """``G + eps I`` (TorchJD's ``regularize``): makes the QPs strictly convex."""
    return gramian + eps * torch.eye(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)


def _solve_with_active_set(gramian: Tensor, lower: Tensor, active: Tensor) -> Tensor:
    """Solve ``G_FF v_F = -G_FA u_A``, ``v_A = u_A`` for each row (batched, masked Cholesky)."""
    free = ~active
    fixed = torch.where(active, lower, torch.zeros_like(lower))
    # M_b = G on free x free, identity elsewhere: PD since G is (one fused pass over B x K x K).
    eye = torch.eye(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)
    matrix = torch.where(free.unsqueeze(-1) & free.unsqueeze(-2), gramian, eye)
    rhs = torch.where(free, -(fixed @ gramian), fixed)
    # M is symmetric, so M.mT is M in the column-major layout LAPACK wants: no copy.
    upper, _ = torch.linalg.cholesky_ex(matrix.mT, upper=True)
    half = torch.linalg.solve_triangular(upper.mT, rhs.unsqueeze(-1), upper=False)
    solution: Tensor = torch.linalg.solve_triangular(upper, half, upper=True)
    return solution.squeeze(-1)


def project_to_dual_cone(
    lower: Tensor,
    gramian: Tensor,
    *,
    active: Tensor | None = None,
    max_iters: int = 50,
    check_every: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Solve ``min_v v^T G v  s.t.  v >= u`` for every row ``u`` of ``lower``, all at once.

    By Proposition 1 of Quinton & Rey, `Jacobian Descent for Multi-Objective Optimization
    <https://arxiv.org/abs/2406.16232>`_, ``J^T v`` is then the projection of ``J^T u`` onto the
    dual cone of the rows of ``J`` (``G = J J^T``). The solver is the primal-dual active-set
    method (Hintermüller, Ito & Kunisch 2002; a semismooth Newton method on the KKT system
    ``G v = λ, λ >= 0, v >= u, λ ⊙ (v - u) = 0``): each iteration solves every row's equality
    system on its current free set with one batched Cholesky factorization, then re-guesses the
    active set as ``{j : λ_j + u_j - v_j > 0}``. A fixed point is an exact KKT point, so on
    termination the result is the QP's solution up to the linear solves' round-off (no iteration
    tolerance). The first active set is ``active`` when given (a warm start, e.g. the previous
    step's), else the set of rows that do not conflict with ``u`` (``λ = G u > 0``).

    ``G`` must be positive definite (regularize it first). Convergence is checked every
    ``check_every`` iterations (default: every iteration on CPU, where it is free; every 5 on
    accelerators, one host sync each); rows that have not settled after ``max_iters`` iterations
    (cycling, rare for a P-matrix) return their last iterate clamped to ``v >= u``.

    Args:
        lower: (B, K) lower bounds ``u``, one problem per row.
        gramian: (K, K) symmetric positive definite matrix.
        active: (B, K) bool initial guess of the coordinates where ``v = u``.
        max_iters: the most active-set iterations.
        check_every: iterations between convergence checks.

    Returns:
        (B, K) solutions ``v`` and the (B, K) final active sets (to warm-start the next call).

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, -0.5], [-0.5, 1.0]])
        >>> project_to_dual_cone(torch.tensor([[1.0, 0.0]]), G)[0]
        tensor([[1.0000, 0.5000]])
    """
    on_cpu = gramian.device.type == "cpu"
    if check_every is None:
        check_every = 1 if on_cpu else 5
    solution = lower.clone()
    if active is None:
        active = (lower @ gramian) > 0
    final_active = active.clone()
    todo = torch.arange(lower.shape[0], device=lower.device)
    sub_lower, sub_active = lower, active
    for it in range(1, max_iters + 1):
        v = _solve_with_active_set(gramian, sub_lower, sub_active)
        lam = torch.where(sub_active, v @ gramian, torch.zeros_like(v))
        new_active = (lam + sub_lower - v) > 0
        changed = (new_active != sub_active).any(dim=-1)
        if on_cpu:
            # Compact the batch to the unsettled rows: free on CPU, where shapes may depend on data.
            solution[todo] = v
            final_active[todo] = new_active
            keep = changed.nonzero().squeeze(-1)
            if keep.numel() == 0:
                return solution, final_active
            todo, sub_lower, sub_active = todo[keep], sub_lower[keep], new_active[keep]
        else:
            solution, sub_active, final_active = v, new_active, new_active
            if it % check_every == 0 and not bool(changed.any()):
                return solution, final_active
    return torch.maximum(solution, lower), final_active


def should_check(device: torch.device, iteration: int, every: int = 10) -> bool:
    """Whether an iterative solver reads its convergence flag at this (1-based) iteration.

    On CPU reading a flag is free, so every iteration; elsewhere it is a host sync, so every
    ``every`` iterations. Solvers freeze converged coordinates on the device, so their result does
    not depend on when they check.
    """
    return device.type == "cpu" or iteration % every == 0
