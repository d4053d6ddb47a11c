"""UPGrad and DualProj: projections onto the dual cone of the gradients (batched QPs)."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators._qp import normalize_gramian, project_to_dual_cone, regularize_gramian
from labelgrad.aggregators.aggregator_types import GramianWeighting, optional_vector, per_row_vector
from labelgrad.aggregators.diagnostics import SolverDiagnostics

__all__ = ["DualProj", "UPGrad"]

#: The last call's active sets start the next solve only when the normalized Gramian moved by
#: at most this much (largest entry change, relative to its largest entry). On Gramians of
#: consecutive training steps (new batches) they are a worse first guess than the cold one
#: (measured: 4.9 vs 2.9 pivoting iterations at K = 80, 3.1 vs 2.1 at K = 16, 6 vs 4 at
#: K = 1000); on a repeated G they settle at once.
WARM_CHANGE = 1e-3


class _DualConeWeighting(GramianWeighting):
    """Shared set-up: TorchJD's normalization and regularization of G, in float64."""

    _default_presolve = 0

    def __init__(
        self,
        *,
        pref_vector: Tensor | None = None,
        norm_eps: float = 0.0001,
        reg_eps: float = 0.0001,
        warm_start: bool = True,
        presolve_iters: int | None = None,
    ) -> None:
        super().__init__()
        if norm_eps < 0 or reg_eps < 0:
            raise ValueError(f"norm_eps and reg_eps must be >= 0, got {norm_eps}, {reg_eps}")
        self.pref_vector = optional_vector(pref_vector, "pref_vector")
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)
        self.warm_start = warm_start
        self.presolve_iters = self._default_presolve if presolve_iters is None else presolve_iters
        # The last active sets: speed only (the solution does not depend on them), so not saved.
        self._active: Tensor | None
        self.register_buffer("_active", None, persistent=False)
        self._last: Tensor | None  # the normalized G those sets solved
        self.register_buffer("_last", None, persistent=False)
        self._workspace: dict[str, Tensor] = {}  # scratch memory reused by the solver
        self.diagnostics = SolverDiagnostics()

    def _preference(self, gramian: Tensor) -> Tensor:
        k = gramian.shape[0]
        return per_row_vector(
            self.pref_vector, k, 1.0 / k, "pref_vector", like=gramian, dtype=torch.float64
        )

    def _solve(self, lower: Tensor, gramian: Tensor) -> Tensor:
        """The (B, K) solutions ``v >= lower`` of ``min v^T Ĝ v``, without the zero rows of G.

        A zero row i of G (an empty class group, a label without gradient) leaves ``Ĝ_ii = ridge``
        and ``Ĝ_ij = 0``: coordinate i separates from the others in every problem, where it
        solves ``min v_i^2, v_i >= lower_i``, i.e. ``max(lower_i, 0)``, and the trace that
        normalizes G is the same without it. So the QPs are solved on the other rows only (on
        CPU tensors, where finding them is free): the same answer, smaller systems.
        """
        g = gramian.to(torch.float64)
        if g.device.type != "cpu":
            return self._project(lower, g, g.shape[0])
        keep = g.ne(0).any(dim=1)
        if bool(keep.all()):
            return self._project(lower, g, g.shape[0])
        solution = lower.clamp(min=0)
        rows = keep.nonzero().squeeze(1)
        if rows.numel():
            part = self._project(lower[:, rows], g[rows][:, rows], g.shape[0])
            solution[:, rows] = part
        return solution

    def _project(self, lower: Tensor, gramian: Tensor, k: int) -> Tensor:
        # The systems must be positive definite: a rank-deficient G with reg_eps = 0 gave NaN
        # weights. At least 10 K eps of float64 (as MGDA's ridge): it outweighs the rounding of
        # the normalized G and moves the answer by about that much; reg_eps >= it is unchanged.
        ridge = max(self.reg_eps, 10 * k * torch.finfo(torch.float64).eps)
        g = regularize_gramian(normalize_gramian(gramian, self.norm_eps), ridge)
        active, last = self._active, self._last
        unusable = not self.warm_start or active is None or active.shape != lower.shape
        if unusable or (
            g.device.type == "cpu"  # the comparison is a host read: free on CPU only
            and last is not None
            and last.shape == g.shape
            and not bool((g - last).abs_().amax() <= WARM_CHANGE * last.abs().amax())
        ):
            active = None
        presolve = self.presolve_iters
        if presolve < 0:  # automatic: a FISTA step costs O(B K^2), a pivoting step O(B K^3)
            size = lower.shape[0] * lower.shape[1]
            presolve = 0 if size < 32 * 32 else 20 if size < 128 * 128 else 50
        with torch.no_grad():  # not differentiable (an active-set solve)
            solution, active = project_to_dual_cone(
                lower,
                g,
                active=active,
                presolve_iters=presolve,
                workspace=self._workspace,
                diagnostics=self.diagnostics,
                # G / trace(G) has eigenvalues <= 1, so a ridge >= 1e-6 bounds cond(Ĝ) by ~1e6.
                well_conditioned=self.reg_eps >= 1e-6,
            )
        if self.warm_start:
            self._active, self._last = active, g
        return solution

    def extra_repr(self) -> str:
        return f"norm_eps={self.norm_eps}, reg_eps={self.reg_eps}"


class UPGrad(_DualConeWeighting):
    r"""UPGrad (Quinton & Rey, `Jacobian Descent for Multi-Objective Optimization
    <https://arxiv.org/abs/2406.16232>`_): project each gradient onto the dual cone of all of
    them, and combine the projections with the preference weights.

    With ``u = pref_vector`` (default ``1/K``), the weights are ``w = sum_i v_i`` where
    ``v_i = argmin_{v >= u_i e_i} v^T G v`` (Proposition 1 of the paper), on TorchJD 0.18's
    ``G / trace(G)`` (zeros when the trace is below ``norm_eps``) plus ``reg_eps * I``. The K QPs
    are solved together by batched block principal pivoting with an anti-cycling safeguard
    (:func:`~labelgrad.aggregators._qp.project_to_dual_cone`), in float64. Certified: every
    answer is checked against the QP's KKT conditions (relative natural residual <= 1e-9, on the
    device) and the problems that fail are re-solved by single pivots (Murty's rule, which cannot
    cycle); ``diagnostics`` (:class:`~labelgrad.aggregators.SolverDiagnostics`) counts them. So
    it matches TorchJD's quadprog solution to round-off, and ``warm_start`` (the last call's
    active sets) and ``presolve_iters`` (FISTA steps that guess them) change the speed only,
    never the answer beyond that tolerance. Memory is O(K^2) (the systems are built in chunks).

    Args:
        pref_vector: (K,) preference weights, or None for ``1/K``.
        norm_eps: trace below which G counts as zero.
        reg_eps: ridge added to the normalized G (at least 10 K eps of float64 is added, so a
            rank-deficient G with reg_eps = 0 still has positive definite systems).
        warm_start: start the active-set search from the previous call's sets (of the same
            shape). On CPU only when G moved little since (largest change of ``G / trace(G)``
            at most 1e-3 of its largest entry; otherwise the cold start, the better guess across
            training steps); elsewhere always, since the comparison would be a host sync.
        presolve_iters: accelerated projected-gradient steps that guess the first active sets
            when there is no warm start (speed only; 0 starts from the non-conflicting rows;
            default: 0 below K = 32, 20 below K = 128, else 50).

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, -0.5], [-0.5, 1.0]])
        >>> UPGrad().weights(G)  # (1/2 + 1/4) each, up to reg_eps
        tensor([0.7499, 0.7499])
    """

    # K systems per iteration: from K ~ 32 on, a better first guess saves a whole batched
    # factorization; below, the factorizations are cheaper than the guess.
    _default_presolve = -1

    def _weights(self, gramian: Tensor, /) -> Tensor:
        lower = torch.diag(self._preference(gramian))
        return self._solve(lower, gramian).sum(dim=0).to(gramian.dtype)


class DualProj(_DualConeWeighting):
    r"""DualProj: project the preference-weighted gradient onto the dual cone of the gradients.

    ``w = argmin_{v >= u} v^T G v`` with ``u = pref_vector`` (default ``1/K``), i.e. Equation 11
    of Lopez-Paz & Ranzato, `Gradient Episodic Memory for Continual Learning
    <https://arxiv.org/abs/1706.08840>`_ applied to the mean gradient, with TorchJD 0.18's
    normalization, regularization and defaults (see :class:`UPGrad`; same certified solver,
    same ``diagnostics``).

    Args:
        pref_vector: (K,) preference weights, or None for ``1/K``.
        norm_eps: trace below which G counts as zero.
        reg_eps: ridge added to the normalized G (at least 10 K eps of float64 is added, so a
            rank-deficient G with reg_eps = 0 still has positive definite systems).
        warm_start: start the active-set search from the previous call's set.
        presolve_iters: projected-gradient steps that guess the first active set (speed only;
            default 0: one system per iteration is cheap).

    Example:
        >>> import torch
        >>> G = torch.tensor([[1.0, -0.9], [-0.9, 1.0]])
        >>> DualProj().weights(G)
        tensor([0.5000, 0.5000])
    """

    def _weights(self, gramian: Tensor, /) -> Tensor:
        lower = self._preference(gramian).unsqueeze(0)
        return self._solve(lower, gramian)[0].to(gramian.dtype)
