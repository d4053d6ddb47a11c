"""IMTL-G: weights that give every gradient the same projection on the update."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import GramianWeighting

__all__ = ["IMTLG"]


class IMTLG(GramianWeighting):
    r"""IMTL-G (Liu et al., `Towards Impartial Multi-task Learning
    <https://openreview.net/forum?id=IMPnRXEWpvr>`_), in the generalization of Quinton & Rey
    (`Jacobian Descent <https://arxiv.org/abs/2406.16232>`_) that allows dependent rows.

    ``v = pinv(G) d`` with ``d_i = |g_i| = sqrt(G_ii)``, ``w = v / sum(v)`` (zeros when
    ``|sum(v)| < 1e-12``), as TorchJD 0.18. Closed form (``torch.linalg.pinv``'s default cut-off).

    Example:
        >>> import torch
        >>> IMTLG().weights(torch.diag(torch.tensor([1.0, 4.0])))
        tensor([0.6667, 0.3333])
    """

    def _weights(self, gramian: Tensor, /) -> Tensor:
        d = torch.sqrt(torch.diagonal(gramian).clamp(min=0))
        v = torch.linalg.pinv(gramian) @ d
        total = v.sum()
        return torch.where(total.abs() < 1e-12, torch.zeros_like(v), v / total)
