"""GradVac: raise the cosine of each gradient pair towards an EMA target (stateful)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import GramianWeighting
from labelgrad.aggregators.pcgrad import random_orders

__all__ = ["GradVac", "gradvac_weights"]


def gradvac_weights(
    gramian: Tensor, orders: Tensor, targets: Tensor, *, beta: float, eps: float
) -> Tensor:
    r"""GradVac's weights for given visiting orders; updates ``targets`` (K, K) in place.

    For each row ``i`` (all rows at once) and each ``j != i`` in ``orders[i]``: with
    ``g_i^PC = sum_k c_ik g_k``, ``φ = g_i^PC · g_j / (|g_i^PC| |g_j| + eps)``; if
    ``φ < φ̂_ij`` then ``c_ij += |g_i^PC| (φ̂ sqrt(1-φ²) - φ sqrt(1-φ̂²)) / (|g_j| sqrt(1-φ̂²) + eps)``;
    then ``φ̂_ij <- (1 - beta) φ̂_ij + beta φ``. Weights ``sum_i c_i`` (TorchJD 0.18's scale).
    Each step touches a distinct ``(i, j)`` per row, so vectorizing over rows is exact.
    """
    k = gramian.shape[0]
    rows = torch.arange(k, device=gramian.device)
    coefs = torch.eye(k, dtype=gramian.dtype, device=gramian.device)
    cg = gramian.clone()  # row i: g_i^PC · g_k for every k
    norms = gramian.diagonal().clamp(min=0).sqrt()
    for t in range(k):
        j = orders[:, t]
        dot = cg[rows, j]
        norm_i = torch.linalg.vecdot(cg, coefs).clamp(min=0).sqrt()
        norm_j = norms[j]
        phi = dot / (norm_i * norm_j + eps)
        phi_hat = targets[rows, j]
        sqrt_phi = (1 - phi * phi).clamp(min=0).sqrt()
        sqrt_hat = (1 - phi_hat * phi_hat).clamp(min=0).sqrt()
        w = norm_i * (phi_hat * sqrt_phi - phi * sqrt_hat) / (norm_j * sqrt_hat + eps)
        move = (phi < phi_hat) & (j != rows)
        w = torch.where(move, w, torch.zeros_like(w))
        coefs.index_put_((rows, j), w, accumulate=True)
        cg = cg + w.unsqueeze(1) * gramian[j]
        updated = (1 - beta) * phi_hat + beta * phi
        targets.index_put_((rows, j), torch.where(j != rows, updated, phi_hat))
    return coefs.sum(dim=0)


class GradVac(GramianWeighting):
    r"""Gradient Vaccine (Wang et al., `Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models <https://arxiv.org/abs/2010.05874>`_), as a
    weighting of the Gramian with TorchJD 0.18's conventions and defaults (``beta=0.5``,
    ``eps=1e-8``; the update is the sum of the corrected gradients; see
    :func:`gradvac_weights`). Exact, K vectorized steps of O(K^2).

    Stateful: the EMA targets ``φ̂`` (K, K) live in the ``target_cosines`` buffer (zeros at first;
    ``state_dict`` round-trips; reset when K changes or by :meth:`reset`).

    Args:
        beta: EMA rate of the targets, in [0, 1].
        eps: added to denominators, relative to the gradients' scale (the cosines are computed
            on G divided by its largest diagonal entry; TorchJD adds it to the raw norms).
        generator: the source of the random visiting orders; the global one if None.

    Example:
        >>> import torch
        >>> agg = GradVac()
        >>> agg.weights(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))
        tensor([1.5000, 1.5000])
        >>> agg.target_cosines
        tensor([[ 0.0000, -0.2500],
                [-0.2500,  0.0000]])
    """

    target_cosines: Tensor

    def __init__(
        self, *, beta: float = 0.5, eps: float = 1e-8, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta!r}")
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps!r}")
        self.beta = float(beta)
        self.eps = float(eps)
        self.generator = generator
        self.register_buffer("target_cosines", torch.zeros(0, 0))

    def reset(self) -> None:
        """Forget the EMA targets (the next call starts from zeros)."""
        super().reset()
        self.target_cosines = torch.zeros(0, 0, device=self.target_cosines.device)

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        if self.target_cosines.shape != (k, k):
            self.target_cosines = torch.zeros(k, k, dtype=gramian.dtype, device=gramian.device)
        targets = self.target_cosines.to(device=gramian.device, dtype=gramian.dtype)
        orders = random_orders(k, generator=self.generator, device=gramian.device)
        # The weights depend on G only through cosines and ratios of norms: solve on G divided
        # by its largest diagonal entry, so that ``eps`` is relative to the gradients' scale.
        scale = gramian.diagonal().amax().clamp(min=torch.finfo(gramian.dtype).tiny)
        weights = gradvac_weights(gramian / scale, orders, targets, beta=self.beta, eps=self.eps)
        self.target_cosines = targets
        return weights

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The targets' shape depends on K: take the saved one's before loading it.
        saved = state_dict.get(prefix + "target_cosines")
        if isinstance(saved, Tensor):
            self.target_cosines = torch.zeros_like(saved, device=self.target_cosines.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, eps={self.eps}"
