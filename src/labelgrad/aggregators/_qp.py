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


def _scratch(
    workspace: dict[str, Tensor] | None, like: Tensor, numel: int, name: str = "scratch"
) -> Tensor:
    """A 1-D scratch buffer of ``numel`` elements, reused across calls when ``workspace`` is given.

    Reuse matters on CPU: with glibc's default ``mmap`` threshold, fresh multi-megabyte
    temporaries are page-faulted in on every call, which costs more than the factorizations.
    """
    if workspace is None:
        return torch.empty(numel, dtype=like.dtype, device=like.device)
    buffer = workspace.get(name)
    if (
        buffer is None
        or buffer.numel() < numel
        or buffer.dtype != like.dtype
        or buffer.device != like.device
    ):
        buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
        workspace[name] = buffer
    return buffer[:numel]


def _solve_with_active_set(
    gramian: Tensor,
    lower: Tensor,
    active: Tensor,
    compact: bool,
    workspace: dict[str, Tensor] | None = None,
) -> Tensor:
    """Solve ``G_FF v_F = -G_FA u_A``, ``v_A = u_A`` for each row (batched Cholesky).

    On CPU the systems are gathered down to the largest free set (the factorization is cubic in
    it); elsewhere they stay K x K with identity rows on the active set (no data-dependent shape).
    """
    k = gramian.shape[-1]
    fixed = torch.where(active, lower, torch.zeros_like(lower))
    rhs_full = -(fixed @ gramian)
    if compact:
        free_count = (~active).sum(dim=-1)
        m = int(free_count.max())
        if m == 0:
            return fixed
        # Free coordinates first (stable), then keep the first m columns.
        index = torch.argsort(active.to(torch.int8), dim=-1, stable=True)[:, :m]
        valid = torch.arange(m, device=gramian.device) < free_count.unsqueeze(-1)
        # Identity outside the free x free block keeps every system positive definite. The
        # systems and their factors live in one reused scratch buffer.
        batch = active.shape[0]
        scratch = _scratch(workspace, gramian, 2 * batch * m * m)
        matrix = scratch[: batch * m * m].view(batch, m, m)
        flat = _scratch(workspace, index, batch * m * m, "index").view(batch, m, m)
        torch.add(index.unsqueeze(-1) * k, index.unsqueeze(-2), out=flat)
        torch.index_select(gramian.reshape(-1), 0, flat.view(-1), out=matrix.view(-1))
        matrix.masked_fill_(~valid.unsqueeze(-1), 0.0)  # broadcast masks: no (B, m, m) temporary
        matrix.masked_fill_(~valid.unsqueeze(-2), 0.0)
        matrix.diagonal(dim1=-2, dim2=-1).masked_fill_(~valid, 1.0)
        factor = scratch[batch * m * m :].view(batch, m, m).mT  # column-major, as LAPACK wants
        info = torch.empty(batch, dtype=torch.int32, device=gramian.device)
        torch.linalg.cholesky_ex(matrix.mT, upper=True, out=(factor, info))
        upper = factor
    else:
        m = k
        index = torch.arange(k, device=gramian.device).expand_as(active)
        valid = ~active
        eye = torch.eye(k, dtype=gramian.dtype, device=gramian.device)
        matrix = torch.where(valid.unsqueeze(-1) & valid.unsqueeze(-2), gramian, eye)
        # M is symmetric, so M.mT is M in the column-major layout LAPACK wants: no copy.
        upper, _ = torch.linalg.cholesky_ex(matrix.mT, upper=True)
    rhs = torch.where(valid, rhs_full.gather(-1, index), torch.zeros_like(rhs_full[:, :m]))
    half = torch.linalg.solve_triangular(upper.mT, rhs.unsqueeze(-1), upper=False)
    solved: Tensor = torch.linalg.solve_triangular(upper, half, upper=True).squeeze(-1)
    return fixed.scatter(-1, index, torch.where(valid, solved, fixed.gather(-1, index)))


def _presolve(lower: Tensor, gramian: Tensor, iters: int) -> Tensor:
    """Guess the active sets with a few accelerated projected-gradient (FISTA) steps."""
    probe = torch.ones(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)
    for _ in range(8):  # power iteration: λ_max within a few percent from below
        probe = gramian @ probe
        probe = probe / probe.norm().clamp(min=torch.finfo(gramian.dtype).tiny)
    step = 1 / (1.2 * (probe @ gramian @ probe)).clamp(min=torch.finfo(gramian.dtype).tiny)
    v = lower.clone()
    y = lower
    momentum = 1.0
    for _ in range(iters):
        v_next = torch.maximum(lower, y - step * (y @ gramian))
        next_momentum = (1 + (1 + 4 * momentum * momentum) ** 0.5) / 2
        y = v_next + ((momentum - 1) / next_momentum) * (v_next - v)
        v, momentum = v_next, next_momentum
    return v <= lower


def project_to_dual_cone(
    lower: Tensor,
    gramian: Tensor,
    *,
    active: Tensor | None = None,
    presolve_iters: int = 0,
    max_iters: int = 50,
    check_every: int | None = None,
    host_shapes: bool | None = None,
    workspace: dict[str, Tensor] | None = None,
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
        host_shapes: allow data-dependent shapes (compact the batch and the systems); default:
            on CPU only.
        workspace: a dict in which scratch memory is kept between calls (the caller's).

    Returns:
        (B, K) solutions ``v`` and the (B, K) final active sets (to warm-start the next call).

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, -0.5], [-0.5, 1.0]])
        >>> project_to_dual_cone(torch.tensor([[1.0, 0.0]]), G)[0]
        tensor([[1.0000, 0.5000]])
    """
    on_cpu = gramian.device.type == "cpu" if host_shapes is None else host_shapes
    if check_every is None:
        check_every = 1 if on_cpu else 5
    solution = lower.clone()
    if active is None and presolve_iters > 0:
        active = _presolve(lower, gramian, presolve_iters)
    if active is None:
        active = (lower @ gramian) > 0
    final_active = active.clone()
    todo = torch.arange(lower.shape[0], device=lower.device)
    sub_lower, sub_active = lower, active
    for it in range(1, max_iters + 1):
        v = _solve_with_active_set(
            gramian, sub_lower, sub_active, compact=on_cpu, workspace=workspace
        )
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
