"""ConFIG: the conflict-free direction of the unit gradients (a Jacobian aggregator)."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import (
    JacobianAggregator,
    optional_vector,
    per_row_vector,
)

__all__ = ["ConFIG"]


class ConFIG(JacobianAggregator):
    r"""ConFIG (Liu et al., `ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks <https://arxiv.org/abs/2408.11104>`_, Equation 2), as TorchJD 0.18.

    With unit rows ``ĝ_i = g_i / |g_i|`` (zero rows stay zero), the direction is
    ``d = normalize(pinv(Ĵ) u)`` (``u = pref_vector``, default ones: the direction with equal
    positive cosine to every gradient) and the update is ``(sum_i g_i · d) d``. Closed form.

    Args:
        pref_vector: (K,) preference weights, or None for ones.

    Example:
        >>> import torch
        >>> ConFIG().aggregate(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        tensor([1.0000, 1.0000])
    """

    def __init__(self, *, pref_vector: Tensor | None = None) -> None:
        super().__init__()
        self.pref_vector = optional_vector(pref_vector, "pref_vector")

    def _aggregate(self, jacobian: Tensor, /) -> Tensor:
        u = per_row_vector(self.pref_vector, jacobian.shape[0], 1.0, "pref_vector", like=jacobian)
        units = torch.nan_to_num(jacobian / jacobian.norm(dim=1, keepdim=True), 0.0)
        direction = torch.nn.functional.normalize(torch.linalg.pinv(units) @ u, dim=0)
        return (jacobian @ direction).sum() * direction
