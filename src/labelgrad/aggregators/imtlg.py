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
    ``|sum(v)| sqrt(max_i G_ii) < 1e-12``: TorchJD 0.18's ``|sum(v)| < 1e-12`` in units where
    ``max_i G_ii = 1``, so that the weights do not depend on G's scale). Closed form
    (``torch.linalg.pinv``'s default cut-off).

    Example:
        >>> import torch
        >>> IMTLG().weights(torch.diag(torch.tensor([1.0, 4.0])))
        tensor([0.6667, 0.3333])
    """

    def _weights(self, gramian: Tensor, /) -> Tensor:
        d = torch.sqrt(torch.diagonal(gramian).clamp(min=0))
        v = torch.linalg.pinv(gramian) @ d
        total = v.sum()
        # TorchJD's test |sum(v)| < 1e-12 holds at the scale max G_ii = 1; v scales as
        # G^(-1/2), so the test is made in those units (an absolute 1e-12 zeroed every G above
        # ~1e24, e.g. a float32 G of 1e30).
        unit = torch.diagonal(gramian).max().clamp(min=torch.finfo(gramian.dtype).tiny).sqrt()
        return torch.where((total * unit).abs() < 1e-12, torch.zeros_like(v), v / total)
