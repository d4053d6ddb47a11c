"""CAGrad: the update that maximizes the worst improvement in a ball around the mean gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators._qp import min_norm_point, normalize_gramian, should_check
from labelgrad.aggregators.aggregator_types import GramianWeighting
from labelgrad.aggregators.diagnostics import SolverDiagnostics
from labelgrad.aggregators.double_sampling import shift_for_simplex

__all__ = ["CAGrad", "project_to_simplex"]


def project_to_simplex(y: Tensor) -> Tensor:
    """Euclidean projection of ``y`` (..., K) onto the probability simplex (sort-based, exact).

    Example:
        >>> import torch
        >>> project_to_simplex(torch.tensor([2.0, 0.0]))
        tensor([1., 0.])
    """
    k = y.shape[-1]
    y = shift_for_simplex(y)  # keeps the ``- 1`` below at any magnitude
    sorted_y = torch.sort(y, dim=-1, descending=True).values
    cumsum = sorted_y.cumsum(dim=-1) - 1
    index = torch.arange(1, k + 1, dtype=y.dtype, device=y.device)
    cond = sorted_y - cumsum / index > 0
    rho = cond.to(y.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last True
    theta = cumsum.gather(-1, rho) / (rho + 1).to(y.dtype)
    return (y - theta).clamp(min=0)


class CAGrad(GramianWeighting):
    r"""CAGrad (Liu et al., `Conflict-Averse Gradient Descent for Multi-task Learning
    <https://arxiv.org/abs/2110.14048>`_, Algorithm 1), with TorchJD 0.18's conventions.

    On ``Ĝ = G / trace(G)``: ``g_0`` is the mean gradient, ``√φ = c |g_0|``, and
    ``w* = argmin_{w in simplex} w^T Ĝ 1/K + √φ sqrt(w^T Ĝ w)``; the weights are
    ``1/K + (√φ / |g_w*|) w*`` (zeros when ``|g_w*| < norm_eps``: already Pareto-stationary; also
    when ``|g_w*| < 8 sqrt(eps) sum_i w*_i |g_i|`` with ``eps`` of G's dtype, below which the
    rounding of G's entries decides ``|g_w*|``: a float32 G of a strongly stationary J is
    indefinite at that level).
    TorchJD solves the simplex problem with cvxpy/Clarabel; here accelerated projected gradient
    (FISTA with adaptive restart, step ``|g_w| / (√φ λ_max)``, exact sort-based simplex
    projection) in float64, up to ``max_iters`` steps, stopping when a step moves ``w`` by less
    than ``tol`` (max-norm; checked every 10 steps), then Newton steps on the face it found (each
    kept only if the objective decreases; on CPU up to 3 rounds that let in coordinates whose KKT
    sign is wrong). Our objective is at or below TorchJD's on every test Gramian; the weights
    agree to ~1e-4 relative (Clarabel's own tolerance), the updates ``J^T w`` closer.

    Certified: the answer's Frank-Wolfe gap (an upper bound on ``f(w) - f*``) must be at most
    ``CERT_TOL = 1e-6`` of the gradient's scale; where it is not (FISTA stopped early, or 0 is in
    the convex hull, where ``f`` is not differentiable at the minimizer), the minimizer is
    recomputed exactly as a fixed point of min-norm problems (:meth:`_exact`, exact LCP solves
    in float64). ``diagnostics`` counts the fallbacks.

    Args:
        c: radius scale of the ball around the mean gradient (paper default 0.5).
        norm_eps: trace / norm threshold below which G or ``g_w`` counts as zero.
        max_iters: the most gradient steps.
        tol: stopping threshold on the step.

    Example:
        >>> import torch
        >>> CAGrad().weights(torch.eye(2))
        tensor([0.7500, 0.7500])
    """

    #: Certificate tolerance: the Frank-Wolfe gap relative to the gradient's scale.
    CERT_TOL = 1e-6

    def __init__(
        self,
        *,
        c: float = 0.5,
        norm_eps: float = 0.0001,
        max_iters: int = 300,
        tol: float = 1e-10,
    ) -> None:
        super().__init__()
        if c < 0 or norm_eps < 0:
            raise ValueError(f"c and norm_eps must be non-negative, got {c!r}, {norm_eps!r}")
        self.c = float(c)
        self.norm_eps = float(norm_eps)
        self.max_iters = int(max_iters)
        self.tol = float(tol)
        self.diagnostics = SolverDiagnostics()

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        g = normalize_gramian(gramian.to(torch.float64), self.norm_eps)
        tiny = torch.finfo(torch.float64).tiny
        mean = torch.full((k,), 1.0 / k, dtype=torch.float64, device=g.device)
        b = g @ mean
        sqrt_phi = self.c * (mean @ b).clamp(min=0).sqrt()
        lam_max = torch.linalg.eigvalsh(g)[-1].clamp(min=tiny)

        def objective(w: Tensor) -> Tensor:
            return w @ b + sqrt_phi * (w @ g @ w).clamp(min=0).sqrt()

        w = mean.clone()
        y = w.clone()
        momentum = 1.0
        f_w = objective(w)
        for it in range(1, self.max_iters + 1):
            gy = g @ y
            norm_y = (y @ gy).clamp(min=0).sqrt()
            grad = b + sqrt_phi * gy / norm_y.clamp(min=tiny)
            step = norm_y.clamp(min=1e-12) / (sqrt_phi * lam_max).clamp(min=tiny)
            w_next = project_to_simplex(y - step * grad)
            f_next = objective(w_next)
            worse = f_next > f_w
            next_momentum = (1 + (1 + 4 * momentum * momentum) ** 0.5) / 2
            extrapolated = w_next + ((momentum - 1) / next_momentum) * (w_next - w)
            # Adaptive restart (O'Donoghue & Candès): drop the momentum when f goes up.
            y = torch.where(worse, w, extrapolated)
            moved = (w_next - w).abs().max()
            w = torch.where(worse, w, w_next)
            f_w = torch.minimum(f_w, f_next)
            momentum = 1.0 if (g.device.type == "cpu" and bool(worse)) else next_momentum
            if it % 10 == 0 and should_check(g.device, it) and bool(moved <= self.tol):
                break
        for _ in range(3):  # Newton on the face, then let in coordinates whose KKT sign is wrong
            support = w > 1e-9
            w = self._polish(w, support, g, b, sqrt_phi)
            gw = g @ w
            grad = b + sqrt_phi * gw / (w @ gw).clamp(min=1e-24).sqrt()
            level = (grad * support).sum() / support.sum().clamp(min=1)
            entering = ~support & (grad < level - 1e-12 * level.abs())
            if g.device.type != "cpu" or not bool(entering.any()):
                break
            # Give the entering coordinates a small share and polish again on the larger face.
            w = torch.where(entering, torch.full_like(w, 1e-6), w)
            w = w / w.sum()
        ridge = 10 * k * torch.finfo(gramian.dtype).eps  # G's own rounding, in its dtype
        w = self._certify(w, g, b, sqrt_phi, lam_max, ridge)
        norm_w = (w @ g @ w).clamp(min=0).sqrt()
        # |g_w|^2 = w^T G w is known to the rounding of G's entries, ~eps |g_i| |g_j| each: below
        # 8 sqrt(eps) sum_i w_i |g_i| (in G's dtype) |g_w| cannot be told from 0 (a float32 G of
        # a stationary J is indefinite at that level), and 0 is the answer there.
        spread = w @ g.diagonal().clamp(min=0).sqrt()
        floor = torch.clamp(8 * torch.finfo(gramian.dtype).eps ** 0.5 * spread, min=self.norm_eps)
        weights = mean + sqrt_phi / norm_w.clamp(min=tiny) * w
        weights = torch.where(norm_w >= floor, weights, torch.zeros_like(weights))
        return weights.to(gramian.dtype)

    def _certify(
        self,
        w: Tensor,
        g: Tensor,
        b: Tensor,
        sqrt_phi: Tensor,
        lam_max: Tensor,
        ridge: float = 1e-10,
    ) -> Tensor:
        """Check the Frank-Wolfe gap of ``w``; where it fails, solve exactly (:meth:`_exact`).

        ``f`` is convex, so ``gap = ∇f(w)^T w - min_i ∇f(w)_i >= f(w) - f*``; certified when the
        gap is at most ``CERT_TOL`` of the gradient's scale ``|b|_∞ + √φ sqrt(λ_max)``. The gap is
        undefined where ``g_w = 0`` (``f`` is not differentiable there), which fails the check.
        Reading the verdict is one host read (free on CPU; a sync elsewhere, like FISTA's checks).
        """
        scale = b.abs().max() + sqrt_phi * lam_max.sqrt()
        gap = self._gap(w, g, b, sqrt_phi)
        # √φ = 0 (c = 0 or g_0 = 0): f is linear and the weights are 1/K whatever w is.
        failed = not bool((sqrt_phi == 0) | (gap <= self.CERT_TOL * scale))
        uncertified: Tensor | int = 0
        if failed:
            w, residual = self._exact(g, b, sqrt_phi, ridge=ridge)
            uncertified = (~(residual <= self.CERT_TOL)).to(torch.int64)
        self.diagnostics.record(1, int(failed), uncertified)
        return w

    @staticmethod
    def _gap(w: Tensor, g: Tensor, b: Tensor, sqrt_phi: Tensor) -> Tensor:
        gw = g @ w
        norm = (w @ gw).clamp(min=0).sqrt()
        grad = b + sqrt_phi * gw / norm
        return torch.nan_to_num(grad @ w - grad.min(), nan=torch.inf)

    @staticmethod
    def _exact(
        g: Tensor, b: Tensor, sqrt_phi: Tensor, iters: int = 60, ridge: float = 1e-10
    ) -> tuple[Tensor, Tensor]:
        """The robust fallback: the minimizer as a fixed point of exact min-norm problems.

        At the minimizer, with ``ρ = |g_w|`` and ``t = ρ / √φ``, ``w`` also minimizes
        ``b^T w + |g_w|^2 / (2t)``, i.e. it is the min-norm point of the hull of the shifted
        gradients ``g_i + t g_0`` (Gramian ``G + t (b 1^T + 1 b^T) + t^2 |g_0|^2 1 1^T``), solved
        exactly by :func:`~labelgrad.aggregators._qp.min_norm_point`. ``φ(ρ) = |g_w(ρ)|`` is
        non-decreasing, so ``φ(ρ) = ρ`` is bracketed by ``[0, max_i |g_i|]`` and found by
        regula falsi (Illinois). ``ρ = 0`` is the min-norm point of the hull itself (the case
        ``0 in the hull, c >= 1``, where first-order methods only reach the minimizer in the
        limit). Returns ``w`` and the relative residual ``|φ(ρ) - ρ| / max_i |g_i|``.
        """
        k = g.shape[0]
        ones = torch.ones(k, dtype=g.dtype, device=g.device)
        mean_sq = b.mean()  # |g_0|^2 = m^T G m with m = 1/K

        def solve(rho: float) -> tuple[Tensor, float]:
            t = rho / float(sqrt_phi)
            shifted = g + t * (torch.outer(b, ones) + torch.outer(ones, b))
            shifted = shifted + t * t * mean_sq * torch.outer(ones, ones)
            w = min_norm_point(shifted, ridge=ridge)
            return w, float((w @ g @ w).clamp(min=0).sqrt()) - rho

        hi = scale = float(g.diagonal().clamp(min=0).sqrt().max())  # hi shrinks; scale stays
        w, h_lo = solve(0.0)
        lo, side = 0.0, 0
        if h_lo > 1e-12 * hi:
            w_hi, h_hi = solve(hi)
            w, h = w_hi, h_hi
            for _ in range(iters):
                if abs(h) <= 1e-12 * hi or hi - lo <= 1e-15 * hi:
                    break
                rho = (lo * h_hi - hi * h_lo) / (h_hi - h_lo)
                w, h = solve(rho)
                if h > 0:
                    lo, h_lo = rho, h
                    h_hi = h_hi / 2 if side == 1 else h_hi
                    side = 1
                else:
                    hi, h_hi = rho, h
                    h_lo = h_lo / 2 if side == -1 else h_lo
                    side = -1
            h_lo = h
        residual = torch.tensor(abs(h_lo) / max(scale, 1e-300), dtype=g.dtype, device=g.device)
        return w, residual

    @staticmethod
    def _polish(
        w: Tensor, support: Tensor, g: Tensor, b: Tensor, sqrt_phi: Tensor, steps: int = 6
    ) -> Tensor:
        """Newton steps on the face ``support`` of the simplex, each kept only if f decreases."""
        k = w.shape[0]
        tiny = torch.finfo(torch.float64).tiny

        def objective(x: Tensor) -> Tensor:
            return x @ b + sqrt_phi * (x @ g @ x).clamp(min=0).sqrt()

        sf = support.to(torch.float64)
        eye = torch.eye(k + 1, dtype=torch.float64, device=w.device)
        for _ in range(steps):
            gw = g @ w
            norm = (w @ gw).clamp(min=1e-24).sqrt()
            grad = b + sqrt_phi * gw / norm
            hess = sqrt_phi * (g / norm - torch.outer(gw, gw) / norm**3)
            # KKT of min f on {w_S : sum w_S = 1}: [H_SS 1; 1^T 0] [dw; mu] = [-grad_S; 0].
            kkt = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=w.device)
            kkt[:k, :k] = hess * torch.outer(sf, sf)
            kkt[:k, k] = sf
            kkt[k, :k] = sf
            free = torch.cat([support, torch.ones(1, dtype=torch.bool, device=w.device)])
            kkt = torch.where(free.unsqueeze(0) & free.unsqueeze(1), kkt, eye)
            rhs = torch.cat([-grad * sf, torch.zeros(1, dtype=torch.float64, device=w.device)])
            kkt = torch.nan_to_num(kkt, nan=0.0, posinf=0.0, neginf=0.0)
            rhs = torch.nan_to_num(rhs, nan=0.0, posinf=0.0, neginf=0.0)
            if kkt.device.type == "cpu":  # gelsy: rank-revealing, for singular faces
                sol = torch.linalg.lstsq(kkt, rhs.unsqueeze(-1)).solution.squeeze(-1)
            else:  # CUDA's lstsq driver needs full rank
                sol = torch.linalg.pinv(kkt) @ rhs
            dw = sol[:k] * sf
            ratio = torch.where(dw < 0, -0.99 * w / dw.clamp(max=-tiny), torch.inf)
            stepped = (w + ratio.min().clamp(max=1.0) * dw).clamp(min=0)
            stepped = stepped / stepped.sum()
            # A degenerate face (|g_w| ~ 0: the weights become 0 anyway) keeps the FISTA point.
            better = stepped.isfinite().all() & (objective(stepped) <= objective(w))
            w = torch.where(better, stepped, w)
        return w

    def extra_repr(self) -> str:
        return f"c={self.c}, norm_eps={self.norm_eps}"
