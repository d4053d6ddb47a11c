"""Weightings that ignore the Gramian's values: Mean, Sum and Random."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import GramianWeighting

__all__ = ["Mean", "Random", "Sum"]


class Mean(GramianWeighting):
    """Average of the label-group gradients: ``w = (1/K, ..., 1/K)``.

    The baseline every method is compared with; with it ``aggregate_backward`` equals a plain
    backward of ``losses.mean()``.

    Example:
        >>> import torch
        >>> Mean().weights(torch.eye(2))
        tensor([0.5000, 0.5000])
    """

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        return torch.full((k,), 1.0 / k, dtype=gramian.dtype, device=gramian.device)


class Sum(GramianWeighting):
    """Sum of the label-group gradients: ``w = (1, ..., 1)``.

    Example:
        >>> import torch
        >>> Sum().weights(torch.eye(3))
        tensor([1., 1., 1.])
    """

    def _weights(self, gramian: Tensor, /) -> Tensor:
        return torch.ones(gramian.shape[0], dtype=gramian.dtype, device=gramian.device)


class Random(GramianWeighting):
    """Random loss weighting: ``w = softmax(z)``, ``z ~ N(0, I)`` drawn at every call.

    Algorithm 2 of Lin et al., `Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning <https://arxiv.org/abs/2111.10603>`_ (TorchJD's ``RandomWeighting``).

    Args:
        generator: the source of randomness (on the Gramian's device); the global one if None.

    Example:
        >>> import torch
        >>> w = Random(generator=torch.Generator().manual_seed(0)).weights(torch.eye(4))
        >>> round(float(w.sum()), 6), bool((w > 0).all())
        (1.0, True)
    """

    def __init__(self, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator

    def _weights(self, gramian: Tensor, /) -> Tensor:
        z = torch.randn(
            gramian.shape[0],
            generator=self.generator,
            dtype=gramian.dtype,
            device=gramian.device,
        )
        return torch.softmax(z, dim=-1)
