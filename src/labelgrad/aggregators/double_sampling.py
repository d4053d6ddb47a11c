"""MoDo and SDMGrad: simplex-projected weight updates driven by a two-batch matrix J1 J2^T."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.aggregators._state import resize_buffers_for_load
from labelgrad.aggregators.aggregator_types import GramianWeighting, optional_vector, per_row_vector

__all__ = ["MoDo", "SDMGrad", "project_to_simplex", "shift_for_simplex"]


def shift_for_simplex(y: Tensor) -> Tensor:
    """``y`` (..., K) shifted so that its largest entry is 0 where its magnitude is large.

    The simplex projection commutes with a shift of all entries, and its thresholds subtract 1
    from sums of entries: beyond ``|y| ~ 1 / sqrt(eps)`` of the dtype (2896 in float32) the
    ``- 1`` loses half its digits, beyond ``1 / eps`` all of them (all-zero weights). Below that
    ``y`` is returned as it is (bitwise TorchJD's rounding). No host read.

    Example:
        >>> import torch
        >>> shift_for_simplex(torch.tensor([5e9, 4e9]))
        tensor([ 0.0000e+00, -1.0000e+09])
    """
    top = y.amax(dim=-1, keepdim=True)
    large = top.abs() > torch.finfo(y.dtype).eps ** -0.5
    return y - torch.where(large, top, torch.zeros_like(top))


def project_to_simplex(y: Tensor) -> Tensor:
    r"""Euclidean projection of ``y`` (K,) onto the probability simplex, vectorized (sort-based).

    With ``u`` sorted decreasingly and ``t_j = (u_1 + ... + u_j - 1) / j``, the threshold is
    ``t_ρ`` for the last ``ρ`` with ``u_ρ > t_ρ`` (those ``j`` form a prefix); the projection is
    ``max(y - t_ρ, 0)``. No host read.

    Example:
        >>> import torch
        >>> project_to_simplex(torch.tensor([0.5, 2.0, -1.0]))
        tensor([0., 1., 0.])
    """
    k = y.shape[0]
    y = shift_for_simplex(y)
    u = torch.sort(y, descending=True).values
    thresholds = (u.cumsum(0) - 1) / torch.arange(1, k + 1, dtype=y.dtype, device=y.device)
    rho = (u > thresholds).sum().clamp(min=1) - 1
    # gather, not thresholds[rho]: indexing with a 0-dim tensor reads it on the host.
    return (y - thresholds.gather(0, rho.view(1))).clamp(min=0)


class _SimplexState(GramianWeighting):
    """Keeps the (K,) simplex iterate ``task_weights`` (uniform at first and after K changes)."""

    task_weights: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("task_weights", torch.zeros(0))

    def reset(self) -> None:
        """Forget the iterate: the next call starts from uniform weights."""
        super().reset()
        self.task_weights = torch.zeros(0, device=self.task_weights.device)

    def _iterate(self, matrix: Tensor) -> Tensor:
        k = matrix.shape[0]
        if self.task_weights.shape != (k,):
            return torch.full((k,), 1.0 / k, dtype=matrix.dtype, device=matrix.device)
        return self.task_weights.to(dtype=matrix.dtype, device=matrix.device)

    def expects_gramian(self) -> bool:
        """False: ``A`` may be any square matrix (the two-batch ``J_1 J_2^T``)."""
        return False

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        resize_buffers_for_load(self, state_dict, prefix, ["task_weights"])
        super()._load_from_state_dict(state_dict, prefix, *args)


class MoDo(_SimplexState):
    r"""MoDo (Chen et al., `Three-Way Trade-Off in Multi-Objective Learning: Optimization,
    Generalization and Conflict-Avoidance <https://www.jmlr.org/papers/v25/23-1287.html>`_, JMLR
    2024), as TorchJD 0.18's ``MoDoWeighting``.

    One projected gradient step per call on the task weights ``λ`` (stateful, uniform at first):
    ``λ <- Π_simplex(λ - γ (A λ + ρ λ))``, returned as the weights (mean scale). ``A`` should be
    ``J_1 J_2^T`` from two independent mini-batches (the paper's guarantee needs it; any square
    matrix is accepted, the single-batch Gramian ``J J^T`` included). Defaults as TorchJD.

    The iterate lives in the ``task_weights`` buffer (``state_dict`` round-trips; restarted by
    :meth:`reset` or when K changes).

    Args:
        gamma: step size of the weight update (> 0).
        rho: l2 regularisation of the weights (>= 0).

    Example:
        >>> import torch
        >>> agg = MoDo()
        >>> agg.weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([0.5750, 0.4250])
        >>> agg.weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # it moves on from there
        tensor([0.6305, 0.3695])
    """

    def __init__(self, *, gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        if not rho >= 0:
            raise ValueError(f"rho must be non-negative, got {rho!r}")
        self.gamma = float(gamma)
        self.rho = float(rho)

    def _weights(self, gramian: Tensor, /) -> Tensor:
        lam = self._iterate(gramian)
        lam = project_to_simplex(lam - self.gamma * (gramian @ lam + self.rho * lam))
        self.task_weights = lam
        return lam

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, rho={self.rho}"


class SDMGrad(_SimplexState):
    r"""SDMGrad (Xiao et al., `Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms <https://arxiv.org/abs/2305.18409>`_, NeurIPS 2023), as TorchJD 0.18's
    ``SDMGradWeighting`` (defaults ``lr=10``, ``momentum=0.5``, ``n_iter=20``, ``lambda_=0.3``).

    ``A`` (``J_1 J_2^T`` from two independent batches, or the Gramian) is divided by
    ``s^2 + 1e-8 min(s^2 / 1e-4, 1)`` with ``s^2 = mean_i sqrt(max(A_ii, 0))^2`` (TorchJD's
    ``s^2 + 1e-8`` from ``s^2 = 1e-4`` up; below, ``1e-4 s^2``, relative, so that tiny ``A``
    are not flattened: TorchJD's absolute ``1e-8`` is 0 in float16 and dominates at small
    scales; where no diagonal entry is positive, ``s^2 = max_ij |A_ij|``); then ``n_iter``
    steps of heavy-ball SGD on the simplex from the stored iterate ``w``:
    ``v <- μ v + A (w + λ w̃)``, ``w <- Π_simplex(w - lr v)``; the weights are
    ``(w + λ w̃) / (1 + λ)`` (mean scale), ``w̃`` the preference vector (uniform by default).
    The iterate ``w`` lives in the ``task_weights`` buffer (``state_dict`` round-trips;
    restarted by :meth:`reset` or when K changes).

    Args:
        lr: step size of the inner SGD (> 0).
        momentum: heavy-ball momentum, in [0, 1).
        n_iter: inner steps per call (>= 1).
        lambda_: pull towards the preference direction (>= 0).
        pref_vector: (K,) preference weights ``w̃``, or None for ``1/K``.

    Example:
        >>> import torch
        >>> SDMGrad().weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([0.1417, 0.8583])
    """

    def __init__(
        self,
        *,
        lr: float = 10.0,
        momentum: float = 0.5,
        n_iter: int = 20,
        lambda_: float = 0.3,
        pref_vector: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
        if not lambda_ >= 0:
            raise ValueError(f"lambda_ must be non-negative, got {lambda_!r}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.n_iter = n_iter
        self.lambda_ = float(lambda_)
        self.pref_vector = optional_vector(pref_vector, "pref_vector")

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        target = per_row_vector(self.pref_vector, k, 1.0 / k, "pref_vector", like=gramian)
        scale = gramian.diagonal().clamp(min=0).sqrt().mean()
        # TorchJD's ``+ 1e-8``, made relative below s^2 = 1e-4 (where an absolute constant
        # would change the step size with the scale of A; it is 0 in float16); zero A stays 0.
        sq = scale * scale
        # A cross matrix J_1 J_2^T may have no positive diagonal entry (s = 0): its largest
        # entry then sets the scale (dividing by s^2 gave inf, then NaN weights); zero A stays 0.
        sq = torch.where(sq > 0, sq, gramian.abs().max())
        denominator = sq + 1e-8 * (sq / 1e-4).clamp(max=1)
        a = gramian / denominator.clamp(min=torch.finfo(gramian.dtype).tiny)
        w = self._iterate(gramian)
        velocity = torch.zeros_like(w)
        for _ in range(self.n_iter):  # iterations of the inner solver, not rows
            velocity = self.momentum * velocity + a @ (w + self.lambda_ * target)
            w = project_to_simplex(w - self.lr * velocity)
        self.task_weights = w
        return (w + self.lambda_ * target) / (1 + self.lambda_)

    def extra_repr(self) -> str:
        return (
            f"lr={self.lr}, momentum={self.momentum}, n_iter={self.n_iter}, lambda_={self.lambda_}"
        )
