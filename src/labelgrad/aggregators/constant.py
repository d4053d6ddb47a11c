"""Constant: the same pre-determined weights at every call."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import GramianWeighting

__all__ = ["Constant"]


class Constant(GramianWeighting):
    r"""Constant weights, whatever the Gramian: TorchJD 0.18's ``Constant`` / ``ConstantWeighting``.

    TorchJD requires the weights; here ``weights=None`` (the default, so that every aggregator
    constructs with no arguments) means ``w = (1, ..., 1)`` for the K read from the Gramian, i.e.
    the ordinary summed step (:class:`Sum`). Given weights fix K: a Gramian of another size is an
    error. The weights live in a buffer (``state_dict``, ``.to()``) and are returned in the
    Gramian's dtype and device.

    Args:
        weights: (K,) weights, or None for ones.

    Example:
        >>> import torch
        >>> Constant(torch.tensor([0.5, 2.0])).weights(torch.eye(2))
        tensor([0.5000, 2.0000])
        >>> Constant().weights(torch.eye(3))
        tensor([1., 1., 1.])
    """

    constant_weights: Tensor | None

    def __init__(self, weights: Tensor | None = None) -> None:
        super().__init__()
        if weights is not None and (
            not isinstance(weights, Tensor) or weights.dim() != 1 or not weights.is_floating_point()
        ):
            raise ValueError("weights must be a 1-D floating tensor of K values or None")
        stored = None if weights is None else weights.detach().clone()
        self.register_buffer("constant_weights", stored)

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        if self.constant_weights is None:
            return torch.ones(k, dtype=gramian.dtype, device=gramian.device)
        if self.constant_weights.shape[0] != k:
            raise ValueError(
                f"weights has {self.constant_weights.shape[0]} entries but the Gramian has "
                f"K = {k} rows"
            )
        return self.constant_weights.to(dtype=gramian.dtype, device=gramian.device)

    def extra_repr(self) -> str:
        return "" if self.constant_weights is None else f"weights={self.constant_weights}"
