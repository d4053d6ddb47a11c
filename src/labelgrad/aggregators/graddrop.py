"""GradDrop: per-coordinate sign dropout of the label gradients (a Jacobian aggregator)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import (
    JacobianAggregator,
    optional_vector,
    per_row_vector,
)

__all__ = ["GradDrop"]


class GradDrop(JacobianAggregator):
    r"""GradDrop (Chen et al., `Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
    Sign Dropout <https://arxiv.org/abs/2010.06808>`_, Algorithm 1 lines 10-15), as TorchJD 0.18.

    Per coordinate, the positive sign purity is ``P = (1 + sum_i g_i / sum_i |g_i|) / 2``; with
    ``U ~ Uniform(0, 1)`` drawn per coordinate, gradient ``i`` keeps its positive entries where
    ``P > U`` and its negative ones where ``P < U``; the update is
    ``sum_i (leak_i + (1 - leak_i) M_i) ⊙ g_i``. Vectorized over the K rows.

    Args:
        f: a monotonically increasing map applied to the purity ``P`` (identity if None).
        leak: (K,) leak values, or None for no leak.
        generator: the source of ``U`` (on the Jacobian's device); the global one if None.

    Example:
        >>> import torch
        >>> GradDrop().aggregate(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # no conflict: the sum
        tensor([4., 6.])
    """

    def __init__(
        self,
        *,
        f: Callable[[Tensor], Tensor] | None = None,
        leak: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.f = f
        self.leak = optional_vector(leak, "leak")
        self.generator = generator

    def _aggregate(self, jacobian: Tensor, /) -> Tensor:
        leak = per_row_vector(self.leak, jacobian.shape[0], 0.0, "leak", like=jacobian)
        purity = 0.5 * (1 + jacobian.sum(dim=0) / jacobian.abs().sum(dim=0))
        if self.f is not None:
            purity = self.f(purity)
        u = torch.rand(
            purity.shape, generator=self.generator, dtype=jacobian.dtype, device=jacobian.device
        )
        keep = ((purity > u) & (jacobian > 0)) | ((purity < u) & (jacobian < 0))
        scale = leak.unsqueeze(1) + (1 - leak.unsqueeze(1)) * keep.to(jacobian.dtype)
        return (scale * jacobian).sum(dim=0)
