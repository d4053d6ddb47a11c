"""Batched, certified solvers for the small QPs behind the weightings (pure torch, on G's device).

The dual-cone projections of UPGrad and DualProj and the min-norm point of MGDA are linear
complementarity problems ``x >= 0, y = q + x M >= 0, x ⊙ y = 0`` with ``M`` symmetric positive
definite (a P-matrix: one solution). :func:`solve_lcp` solves many of them at once by block
principal pivoting; :func:`solve_lcp_certified` checks each answer and re-solves the rows that
fail with a method that cannot cycle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators.diagnostics import SolverDiagnostics

__all__ = [
    "lcp_residual",
    "min_norm_point",
    "normalize_gramian",
    "project_to_dual_cone",
    "regularize_gramian",
    "should_check",
    "solve_lcp",
    "solve_lcp_certified",
]

#: Default certificate tolerance of the LCP solvers (relative natural residual, float64).
LCP_TOL = 1e-9
#: Full block exchanges allowed without fewer infeasibilities before single pivots (Júdice-Pires).
_EXCHANGES = 3
#: Plain block pivoting for this many iterations first (almost every row settles within them).
_PLAIN = 8
#: Up to this K the CPU solver keeps fixed shapes (no compaction of rows or systems).
SMALL_K = 32


def normalize_gramian(gramian: Tensor, eps: float) -> Tensor:
    """``G / trace(G)`` (zeros when ``trace(G) < eps``), TorchJD's ``normalize``; no host sync."""
    trace = gramian.diagonal().sum()
    normalized: Tensor = torch.where(trace < eps, 0.0, gramian / trace)
    return normalized


def regularize_gramian(gramian: Tensor, eps: float) -> Tensor:
    """``G + eps I`` (TorchJD's ``regularize``): makes the QPs strictly convex."""
    regularized = gramian.clone()
    regularized.diagonal().add_(eps)
    return regularized


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


def _pad(matrix: Tensor) -> Tensor:
    """``blockdiag(M, I_K)``: padding slots index the identity block, so a gathered system is
    ``M_FF`` bordered by an identity, with no masking pass over the (n, m, m) systems."""
    k = matrix.shape[-1]
    padded: Tensor = torch.block_diag(
        matrix, torch.eye(k, dtype=matrix.dtype, device=matrix.device)
    )
    return padded


def _free_first(key: Tensor, real: int) -> Tensor:
    """Each row of ``key`` with its free coordinates (keys below ``real``) first, both parts in
    order: the sort of the keys, by positions from one cumulative sum (cheaper than a sort)."""
    free = key < real
    before = free.cumsum(dim=-1)  # free coordinates up to and including each one
    columns = torch.arange(key.shape[-1], device=key.device)
    position = torch.where(free, before - 1, columns - before + before[:, -1:])
    return torch.empty_like(key).scatter_(-1, position, key)


def _solve_block(
    padded: Tensor,
    rhs: Tensor,
    key: Tensor,
    m: int,
    compact: bool,
    workspace: dict[str, Tensor] | None,
    real: int,
) -> Tensor:
    """``x_A = 0`` and ``M_FF x_F = -q_F`` for each row, with systems of size ``m``.

    ``padded`` is :func:`_pad` of ``M``, ``rhs`` the rows of ``[-q, 0]`` (B, 2K) and ``key``
    (B, K) holds ``j`` for a free coordinate ``j`` and ``K + j`` for an active one. Active
    coordinates index the identity block of ``padded`` (distinct indices), which keeps every
    system positive definite and decoupled from them. Compact (CPU): the keys are sorted, so the
    free coordinates come first and the systems are cut to ``m`` (the largest free set);
    otherwise ``m = K`` (no data-dependent shape). More generally ``padded`` is any positive
    definite block diagonal matrix whose last K columns are an identity, keys below ``real``
    select its other blocks, and the first ``real`` columns of the scattered solution return.
    """
    n, width = rhs.shape
    index = _free_first(key, real)[:, :m] if compact else key
    # Flat offsets into ``padded``: int32 where they fit (half the memory traffic of int64).
    small = index.to(torch.int32) if width * width < 2**31 else index
    flat = _scratch(workspace, small, n * m * m, "index").view(n, m, m)
    torch.add(small.unsqueeze(-1) * width, small.unsqueeze(-2), out=flat)
    # Symmetric systems: the row-major gather is its own column-major (LAPACK) layout, so the
    # factorization runs in place, without the copy ``cholesky_ex`` makes otherwise.
    factor = _scratch(workspace, padded, n * m * m).view(n, m, m).mT
    torch.index_select(padded.reshape(-1), 0, flat.view(-1), out=factor.mT.reshape(-1))
    info = torch.empty(n, dtype=torch.int32, device=rhs.device)
    torch.linalg.cholesky_ex(factor, upper=True, out=(factor, info))  # U^T U
    half = torch.linalg.solve_triangular(
        factor.mT, rhs.gather(-1, index).unsqueeze(-1), upper=False
    )
    solved = torch.linalg.solve_triangular(factor, half, upper=True).squeeze(-1)
    x = torch.zeros_like(rhs).scatter_(-1, index, solved)
    return x[:, :real]


def _solve_masked(matrix: Tensor, neg_q: Tensor, active: Tensor, zero: Tensor) -> Tensor:
    """:func:`_solve_block` at full size without the gather: ``M ⊙ f f^T + diag(a)`` for the 0/1
    free and active indicators ``f``, ``a`` (the same systems, in fewer operators at small K)."""
    free = (~active).to(matrix.dtype)
    system = matrix * (free.unsqueeze(-1) * free.unsqueeze(-2))
    system.diagonal(dim1=-2, dim2=-1).add_(active)
    factor, _ = torch.linalg.cholesky_ex(system)
    rhs = torch.where(active, zero, neg_q).unsqueeze(-1)  # +0 (not -0) where active
    x: Tensor = torch.cholesky_solve(rhs, factor).squeeze(-1)
    return x


def _solve_free(
    padded: Tensor,
    rhs: Tensor,
    active: Tensor,
    key: Tensor,
    compact: bool,
    workspace: dict[str, Tensor] | None,
    budget: int,
    real: int | None = None,
) -> Tensor:
    """:func:`_solve_block` in chunks of rows whose systems hold at most ``budget`` elements.

    This bounds the memory by O(budget + B K) instead of O(B K^2). On CPU the rows are sorted by
    free-set size, so each chunk is cut to its own largest free set. ``active`` marks the
    coordinates outside each row's system (keys at or above ``real``, default K).
    """
    n, k = active.shape
    real = k if real is None else real
    if not compact:
        rows = max(1, budget // (k * k))
        if rows >= n:
            return _solve_block(padded, rhs, key, k, False, workspace, real)
        parts = [
            _solve_block(padded, rhs[s : s + rows], key[s : s + rows], k, False, workspace, real)
            for s in range(0, n, rows)
        ]
        return torch.cat(parts)
    active_count = active.sum(dim=-1)
    m = k - int(active_count.min())  # CPU only: free
    if m == 0:
        return rhs.new_zeros(n, real)
    if n * m * m <= budget:  # the common case: one block, no sorting
        return _solve_block(padded, rhs, key, m, True, workspace, real)
    order = torch.argsort(active_count, stable=True)
    counts = (k - active_count[order]).tolist()  # CPU only: free
    x = rhs.new_zeros(n, real)
    start = 0
    while start < n and counts[start] > 0:
        m = counts[start]
        end = min(n, start + max(1, budget // (m * m)))
        chunk = order[start:end]
        x[chunk] = _solve_block(padded, rhs[chunk], key[chunk], m, True, workspace, real)
        start = end
    return x


def _presolve(matrix: Tensor, q: Tensor, iters: int) -> Tensor:
    """Guess the active sets with a few accelerated projected-gradient (FISTA) steps.

    A guess only (the pivoting decides), so in float32, and each step is two fused ops:
    ``x' = max(0, y (I - t M) - t q)`` and the momentum step ``y = lerp(x', x, -beta)``.
    """
    work = matrix.to(torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    # λ_max from (M / trace)^8 1 (eigenvalues <= 1: no overflow), within a few percent from below.
    power = work / work.diagonal().sum().clamp(min=tiny)
    for _ in range(3):
        power = power @ power
    probe = power.sum(dim=-1)
    step = (probe @ probe) / (1.2 * (probe @ work @ probe)).clamp(min=tiny)
    descent = torch.eye(work.shape[0], dtype=work.dtype, device=work.device) - step * work
    shift = q.to(torch.float32) * -step
    x = torch.zeros_like(shift)
    y = x
    momentum = 1.0
    for _ in range(iters):
        x_next = torch.addmm(shift, y, descent).clamp_(min=0)
        next_momentum = (1 + (1 + 4 * momentum * momentum) ** 0.5) / 2
        y = torch.lerp(x_next, x, (1 - momentum) / next_momentum)
        x, momentum = x_next, next_momentum
    return x <= 0


def _exchange(
    flip: Tensor, best: Tensor, budget: Tensor, single_only: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Júdice-Pires safeguard of block pivoting: after ``_EXCHANGES`` block exchanges without
    fewer infeasibilities, exchange only the largest infeasible index (Murty's rule: finite for
    P-matrices, so the method cannot cycle)."""
    count = flip.sum(dim=-1)
    improved = count < best
    best = torch.minimum(best, count)
    budget = torch.where(improved, torch.full_like(budget, _EXCHANGES), budget - 1)
    if flip.device.type == "cpu" and not single_only and not bool((budget < 0).any()):
        return flip, best, budget  # the common case, free to detect on CPU
    index = torch.arange(1, flip.shape[-1] + 1, device=flip.device)
    last = (flip * index).argmax(dim=-1, keepdim=True)
    one = torch.zeros_like(flip).scatter_(-1, last, True) & flip
    single = (budget < 0).unsqueeze(-1) | single_only
    return torch.where(single, one, flip), best, budget


def solve_lcp(
    matrix: Tensor,
    q: Tensor,
    *,
    active: Tensor | None = None,
    max_iters: int = 50,
    single_pivot: bool = False,
    check_every: int | None = None,
    host_shapes: bool | None = None,
    workspace: dict[str, Tensor] | None = None,
    budget: int | None = None,
    inverse: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Solve ``x >= 0, y = q + x M >= 0, x ⊙ y = 0`` for every row ``q``, all at once.

    ``M`` (K, K) must be symmetric positive definite; then this is the KKT system of
    ``min_x x^T M x / 2 + q^T x`` s.t. ``x >= 0``, which has one solution. Block principal
    pivoting (the primal-dual active-set method of Hintermüller, Ito & Kunisch 2002): each
    iteration solves every row's equality system on its free set (one batched Cholesky), then
    exchanges the infeasible coordinates, with Júdice & Pires' (1994) safeguard from the 9th
    iteration on: after 3 exchanges that do not reduce the number of infeasibilities a row
    pivots one coordinate at a time (Murty's rule), which terminates. Coordinates infeasible by
    less than 64 ulp of ``|q| + |x| max_i M_ii`` (the round-off of ``y``) are left alone
    (degenerate ties). ``single_pivot`` uses Murty's rule from the start.

    Memory: the systems are built in chunks of at most ``budget`` elements (default
    ``max(2^24, 4 K^2)``), so the solver needs O(K^2 + B K), never O(B K^2). Shapes: on CPU with
    K above :data:`SMALL_K` the settled rows are dropped and the systems cut to the largest set
    solved; up to it (and off CPU) every row is solved at full size each iteration.

    Args:
        matrix: (K, K) symmetric positive definite ``M``.
        q: (B, K) one problem per row.
        active: (B, K) bool initial guess of the coordinates where ``x = 0`` (default ``q > 0``).
        max_iters: the most pivoting iterations (rows not settled then keep their last iterate).
        single_pivot: Murty's rule from the first iteration.
        check_every: iterations between convergence checks off CPU (one host sync each).
        host_shapes: allow data-dependent shapes (compact the batch and the systems); default:
            on CPU only.
        workspace: a dict in which scratch memory is kept between calls.
        budget: the most elements of one chunk of systems.
        inverse: ``M^-1``, where ``M`` is well conditioned (e.g. regularized): with host shapes,
            each row then solves the smaller of its free set's system in ``M`` and its active
            set's in ``M^-1`` (the same iterates, up to round-off).

    Returns:
        (B, K) ``x`` and the (B, K) final active sets.

    Example:
        >>> import torch
        >>> M = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> solve_lcp(M, torch.tensor([[-1.0, 1.0]]))[0]
        tensor([[0.5000, 0.0000]])
    """
    n, k = q.shape
    compact = q.device.type == "cpu" if host_shapes is None else host_shapes
    if compact and k <= SMALL_K:
        # Fixed shapes: at small K, operator dispatch costs more than solving every row each
        # iteration, so neither the rows nor the systems are cut (one host read per iteration).
        compact, check_every = False, 1 if check_every is None else check_every
    every = (1 if compact else 5) if check_every is None else check_every
    budget = max(2**24, 4 * k * k) if budget is None else budget
    active = (q > 0) if active is None else active.clone()
    x_out, active_out = torch.zeros_like(q), (active.clone() if compact else active)
    # Round-off of y grows with |x| |M|: violations below it are ignored (else ties cycle).
    eps = 64 * torch.finfo(q.dtype).eps
    low_q = q.abs().amax(dim=-1, keepdim=True) * -eps
    low_diag = matrix.diagonal().abs().amax() * -eps
    # Júdice-Pires counters, made at their first use (most solves settle before it).
    best: Tensor | None = None
    left: Tensor | None = None
    todo = torch.arange(n, device=q.device) if compact else q  # (unused unless compact)
    dual = inverse is not None and compact
    masked = not compact and k <= SMALL_K and n * k * k <= budget
    free_key = active_key = q  # (unused when masked)
    if not masked:
        free_key = torch.arange(k, device=q.device)
        active_key = free_key + k
    if masked:
        padded = sub_rhs = -q  # -q only: the systems are masked, not gathered
        zero = q.new_zeros(())
    elif dual:
        assert inverse is not None
        # Rows with fewer active than free coordinates solve ``H_AA mu_A = -x*_A`` (H = M^-1,
        # x* = -q H the unconstrained minimizer), then ``x = x* + mu H``, ``y_A = mu_A``: the
        # systems are cut to the smaller of the two sets. ``padded`` holds M, H and I_K.
        base = q @ inverse  # -x*
        padded = torch.block_diag(matrix, inverse, torch.eye(k, dtype=q.dtype, device=q.device))
        sub_rhs = torch.cat((-q, base, torch.zeros_like(q)), dim=-1)
        base = base.neg_()
        outside = free_key + 2 * k
    else:
        padded = _pad(matrix)
        sub_rhs = torch.cat((-q, torch.zeros_like(q)), dim=-1)
    sub_active = active
    for it in range(1, max_iters + 1):
        if dual:
            assert inverse is not None
            by_dual = (2 * sub_active.sum(dim=-1, keepdim=True)) < k
            chosen = sub_active == by_dual  # the set whose system is solved
            key = torch.where(chosen, free_key + k * by_dual, outside)
            z = _solve_free(padded, sub_rhs, ~chosen, key, True, workspace, budget, 2 * k)
            x = torch.addmm(z[:, :k], z[:, k:], inverse)
            x = x.addcmul_(base[todo], by_dual).masked_fill_(sub_active, 0)
            y = torch.where(by_dual, z[:, k:], torch.addmm(sub_rhs[:, :k], x, matrix, beta=-1))
        elif masked:
            x = _solve_masked(matrix, sub_rhs, sub_active, zero)
            y = torch.addmm(q, x, matrix)
        else:
            key = torch.where(sub_active, active_key, free_key)
            x = _solve_free(padded, sub_rhs, sub_active, key, compact, workspace, budget)
            y = torch.addmm(sub_rhs[:, :k], x, matrix, beta=-1)  # q + x M
        low = torch.addcmul(low_q, x.abs().amax(dim=-1, keepdim=True), low_diag)
        flip = torch.where(sub_active, y, x) < low
        if single_pivot or it > _PLAIN:
            if best is None or left is None:
                best = torch.full((flip.shape[0],), k + 1, dtype=torch.int64, device=q.device)
                left = torch.full_like(best, _EXCHANGES)
            flip, best, left = _exchange(flip, best, left, single_pivot)
        if compact:  # free on CPU: keep only the unsettled rows
            x_out[todo], active_out[todo] = x, sub_active
            keep = flip.any(dim=-1).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            todo, sub_rhs, low_q = todo[keep], sub_rhs[keep], low_q[keep]
            sub_active = (sub_active ^ flip)[keep]
            if best is not None and left is not None:
                best, left = best[keep], left[keep]
        else:
            x_out, active_out, sub_active = x, sub_active, sub_active ^ flip
            if it % every == 0 and not bool(flip.any()):
                break
    return x_out, active_out


def lcp_residual(matrix: Tensor, q: Tensor, x: Tensor) -> Tensor:
    r"""The certificate of :func:`solve_lcp`: the relative natural residual of each row.

    ``|min(x, q + x M)|_∞ / (|q|_∞ + |x|_∞ max_i M_ii)``: zero exactly at the solution (the
    minimum of two non-negative numbers one of which is zero), and for a positive definite ``M``
    the distance to the solution is at most the residual over ``M``'s smallest eigenvalue.
    NaN rows stay NaN (and fail any ``<= tol`` check).

    Example:
        >>> import torch
        >>> lcp_residual(torch.eye(2), torch.tensor([[-1.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
        tensor([0.])
    """
    y = torch.addmm(q, x, matrix)
    residual = torch.minimum(x, y).abs_().amax(dim=-1)
    scale = torch.addcmul(
        q.abs().amax(dim=-1), x.abs().amax(dim=-1), matrix.diagonal().abs().amax()
    )
    return residual.div_(scale.clamp_(min=torch.finfo(q.dtype).tiny))


def solve_lcp_certified(
    matrix: Tensor,
    q: Tensor,
    *,
    tol: float = LCP_TOL,
    diagnostics: SolverDiagnostics | None = None,
    **options: object,
) -> tuple[Tensor, Tensor]:
    r""":func:`solve_lcp`, then the certificate, then a robust re-solve of the rows that fail it.

    A row is certified when :func:`lcp_residual` is at most ``tol`` (default 1e-9: the
    round-off of the Cholesky solves on TorchJD's regularized Gramians is ~1e-12). Rows that
    fail (the fast solve hit its iteration limit, or a warm start led it astray) are solved
    again from the cold start with Murty's single-pivot rule only (finite for positive definite
    ``M``; up to ``max(100, 20 K)`` pivots). Deciding whether any row failed is one host read:
    free on CPU, one sync on accelerators (where the fast solver already syncs for its
    convergence checks). ``diagnostics`` counts the problems, fallbacks and rows still
    uncertified afterwards (those keep their last, clamped iterate).

    Example:
        >>> import torch
        >>> M = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> solve_lcp_certified(M, torch.tensor([[-1.0, 1.0]], dtype=torch.float64))[0]
        tensor([[0.5000, 0.0000]], dtype=torch.float64)
    """
    x, active = solve_lcp(matrix, q, **options)  # type: ignore[arg-type]
    x = x.clamp(min=0)
    failed = ~(lcp_residual(matrix, q, x) <= tol)
    uncertified: Tensor | int = 0
    fallbacks = 0
    if bool(failed.any()):  # one host read (the usual case: no row failed)
        rows = failed.nonzero().squeeze(-1)
        fallbacks = rows.numel()
        k = q.shape[-1]
        robust = {key: options[key] for key in ("host_shapes", "workspace") if key in options}
        x_rows, active_rows = solve_lcp(
            matrix,
            q[rows],
            single_pivot=True,
            max_iters=max(100, 20 * k),
            **robust,  # type: ignore[arg-type]
        )
        x_rows = x_rows.clamp(min=0)
        uncertified = (~(lcp_residual(matrix, q[rows], x_rows) <= tol)).sum()
        x[rows], active[rows] = x_rows, active_rows
    if diagnostics is not None:
        diagnostics.record(q.shape[0], fallbacks, uncertified)
    return x, active


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
    tol: float = LCP_TOL,
    diagnostics: SolverDiagnostics | None = None,
    well_conditioned: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Solve ``min_v v^T G v  s.t.  v >= u`` for every row ``u`` of ``lower``, certified.

    By Proposition 1 of Quinton & Rey, `Jacobian Descent for Multi-Objective Optimization
    <https://arxiv.org/abs/2406.16232>`_, ``J^T v`` is then the projection of ``J^T u`` onto the
    dual cone of the rows of ``J`` (``G = J J^T``). With ``v = u + x`` the KKT conditions are the
    LCP ``x >= 0, λ = G u + G x >= 0, x ⊙ λ = 0``, solved by :func:`solve_lcp_certified`: block
    pivoting with an anti-cycling safeguard, every answer checked against the KKT conditions
    (relative natural residual <= ``tol``) and re-solved by single pivots where the check fails.
    So the result is the QP's solution to ``tol`` whatever ``active`` (a warm start, e.g. the
    previous step's sets: speed only), ``presolve_iters`` (FISTA steps that guess the first
    sets) and ``max_iters`` are. ``G`` must be positive definite (regularize it first).

    Args:
        lower: (B, K) lower bounds ``u``, one problem per row.
        gramian: (K, K) symmetric positive definite matrix.
        active: (B, K) bool initial guess of the coordinates where ``v = u``.
        presolve_iters: FISTA steps that guess the first active sets (when ``active`` is None).
        max_iters: the most block-pivoting iterations before the fallback.
        check_every: iterations between convergence checks off CPU.
        host_shapes: allow data-dependent shapes; default: on CPU only.
        workspace: a dict in which scratch memory is kept between calls (the caller's).
        tol: the certificate's tolerance.
        diagnostics: counters to update (problems, fallbacks).
        well_conditioned: ``G``'s condition number is modest (at most ~1e6, as after TorchJD's
            normalization and a ridge >= 1e-6): with host shapes and K above ``SMALL_K`` the
            solver may then pivot on ``G^-1`` where active sets are small (speed only).

    Returns:
        (B, K) solutions ``v`` and the (B, K) final active sets (to warm-start the next call).

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> project_to_dual_cone(torch.tensor([[1.0, 0.0]], dtype=torch.float64), G)[0]
        tensor([[1.0000, 0.5000]], dtype=torch.float64)
    """
    q = lower @ gramian
    if active is None and presolve_iters > 0:
        active = _presolve(gramian, q, presolve_iters)
    inverse = _inverse(gramian, host_shapes) if well_conditioned else None
    x, final_active = solve_lcp_certified(
        gramian,
        q,
        tol=tol,
        diagnostics=diagnostics,
        active=active,
        max_iters=max_iters,
        check_every=check_every,
        host_shapes=host_shapes,
        workspace=workspace,
        inverse=inverse,
    )
    return lower + x, final_active


def _inverse(matrix: Tensor, host_shapes: bool | None) -> Tensor | None:
    """``M^-1`` for the CPU solver above ``SMALL_K`` (None elsewhere, or if ``M`` is not
    numerically positive definite: the primal systems alone then)."""
    k = matrix.shape[-1]
    compact = matrix.device.type == "cpu" if host_shapes is None else host_shapes
    if not compact or k <= SMALL_K:
        return None
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:  # host shapes: free on CPU
        return None
    return torch.cholesky_inverse(factor)


def min_norm_point(
    gramian: Tensor, *, ridge: float = 1e-10, diagnostics: SolverDiagnostics | None = None
) -> Tensor:
    r"""The exact minimizer of ``w^T G w`` on the simplex (MGDA's problem), certified.

    With ``M = G / trace(G) + ridge I`` and ``x`` the solution of the LCP ``x >= 0,
    M x - 1 >= 0, x ⊙ (M x - 1) = 0`` (:func:`solve_lcp_certified`), ``w = x / sum(x)``
    satisfies the simplex KKT conditions ``(M w)_i = min_j (M w)_j`` wherever ``w_i > 0``.
    The ridge (relative to the trace; at least ``10 K eps`` of G's dtype, which outweighs the
    rounding that makes a float32 Gramian of dependent rows indefinite) makes the problem
    strictly convex; it moves the answer by O(ridge). A zero Gramian gives ``1/K``.

    Example:
        >>> import torch
        >>> min_norm_point(torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64)))
        tensor([0.8000, 0.2000], dtype=torch.float64)
    """
    k = gramian.shape[0]
    # A float32 Gramian of dependent rows is indefinite at the ~K eps level: outweigh that.
    ridge = max(ridge, 10 * k * torch.finfo(gramian.dtype).eps)
    g = normalize_gramian(gramian.to(torch.float64), torch.finfo(torch.float64).tiny)
    g = regularize_gramian(g, ridge)
    q = -torch.ones(1, k, dtype=torch.float64, device=gramian.device)
    x, _ = solve_lcp_certified(g, q, tol=1e-8, diagnostics=diagnostics)
    return (x[0] / x[0].sum().clamp(min=torch.finfo(torch.float64).tiny)).to(gramian.dtype)


def should_check(device: torch.device, iteration: int, every: int = 10) -> bool:
    """Whether an iterative solver reads its convergence flag at this (1-based) iteration.

    On CPU reading a flag is free, so every iteration; elsewhere it is a host sync, so every
    ``every`` iterations. Solvers freeze converged coordinates on the device, so their result does
    not depend on when they check.
    """
    return device.type == "cpu" or iteration % every == 0
