"""Aligned-MTL: align the gradients' principal components before combining them."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import GramianWeighting, optional_vector, per_row_vector

__all__ = ["AlignedMTL"]

ScaleMode = Literal["min", "median", "rmse"]


class AlignedMTL(GramianWeighting):
    r"""Aligned-MTL (Senushkin et al., `Independent Component Alignment for Multi-Task Learning
    <https://arxiv.org/abs/2305.19000>`_, Algorithm 1), as TorchJD 0.18.

    With ``G = V Λ V^T`` (eigenvalues above ``max(λ) K eps`` only: the rank-``r`` part), the
    balance transformation is ``B = sqrt(σ) V Λ^{-1/2} V^T`` with ``σ`` the smallest kept
    eigenvalue (``"min"``, default), their median (``"median"``) or mean (``"rmse"``); the
    weights are ``w = B u`` with ``u = pref_vector`` (default ``1/K``), and ``w = u`` when G is
    zero. Closed form (one ``eigh``); the rank cut is a mask, so there is no host sync.

    Args:
        pref_vector: (K,) preference weights, or None for ``1/K``.
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

    Example:
        >>> import torch
        >>> AlignedMTL().weights(torch.diag(torch.tensor([1.0, 4.0])))
        tensor([0.5000, 0.2500])
    """

    def __init__(self, *, pref_vector: Tensor | None = None, scale_mode: ScaleMode = "min") -> None:
        super().__init__()
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
        self.pref_vector = optional_vector(pref_vector, "pref_vector")
        self.scale_mode: ScaleMode = scale_mode

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        u = per_row_vector(self.pref_vector, k, 1.0 / k, "pref_vector", like=gramian)
        lam, vecs = torch.linalg.eigh(gramian, UPLO="U")
        tol = lam.max() * k * torch.finfo(gramian.dtype).eps
        kept = lam > tol
        inv_sqrt = torch.where(kept, 1 / lam.clamp(min=torch.finfo(lam.dtype).tiny).sqrt(), 0.0)
        if self.scale_mode == "min":
            scale = torch.where(kept, lam, torch.inf).min()
        elif self.scale_mode == "median":
            scale = torch.where(kept, lam, torch.nan).nanmedian()
        else:
            scale = torch.where(kept, lam, 0.0).sum() / kept.sum().clamp(min=1)
        balance = scale.clamp(min=0).sqrt() * (vecs * inv_sqrt) @ vecs.T
        eye = torch.eye(k, dtype=gramian.dtype, device=gramian.device)
        balance = torch.where(kept.any(), balance, eye)
        return balance @ u
