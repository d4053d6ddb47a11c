"""CR-MOGM: an exponential moving average of another aggregator's weights (stateful)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from labelgrad.aggregators._state import resize_buffers_for_load
from labelgrad.aggregators.aggregator_types import (
    GramianWeighting,
    WeightingWrapper,
    optional_vector,
)
from labelgrad.aggregators.mgda import MGDA

__all__ = ["CRMOGM"]


class CRMOGM(WeightingWrapper):
    r"""CR-MOGM (Zhou et al., `On the Convergence of Stochastic Multi-Objective Gradient
    Manipulation and Beyond <https://proceedings.neurips.cc/paper_files/paper/2022/hash/f91bd64a3620aad8e70a27ad9cb3ca57-Abstract-Conference.html>`_,
    NeurIPS 2022), as TorchJD 0.18's ``CRMOGMWeighting``: the weights ``λ̂_k`` of a wrapped
    aggregator, smoothed across calls as ``λ_k = α λ_{k-1} + (1 - α) λ̂_k``.

    ``λ_0`` is ``initial_weights`` if given, else ``λ̂_1`` (the first output is the wrapped
    aggregator's). ``alpha = 0`` returns the wrapped weights, ``alpha = 1`` freezes ``λ_0``; the
    paper's Corollary 1 raises ``α`` towards 1 as the learning rate decays (set ``.alpha`` between
    calls). The scale is the wrapped aggregator's.

    Defaults: TorchJD requires the wrapped weighting; here it is :class:`MGDA` (the method the
    paper's analysis and experiments centre on), ``alpha = 0.9`` as TorchJD. State: ``smoothed``
    (K,), a buffer (``state_dict`` round-trips, the wrapped aggregator's state included). Unlike
    TorchJD, which raises, a change of K restarts the average (as :class:`GradVac` does);
    :meth:`reset` restarts it and resets the wrapped aggregator where it has ``reset``.

    A :class:`WeightingWrapper`: ``diagnostics`` are the wrapped aggregator's.

    Args:
        aggregator: the Gramian weighting whose weights are smoothed; :class:`MGDA` if None.
        alpha: the weight of the previous average, in [0, 1].
        initial_weights: (K,) weights ``λ_0``, or None.

    Example:
        >>> import torch
        >>> from labelgrad.aggregators import Constant
        >>> agg = CRMOGM(Constant(torch.tensor([1.0, 0.0])), initial_weights=torch.zeros(2))
        >>> agg.weights(torch.eye(2))
        tensor([0.1000, 0.0000])
        >>> agg.weights(torch.eye(2))
        tensor([0.1900, 0.0000])
    """

    smoothed: Tensor
    wraps_as = "smoothed"

    def __init__(
        self,
        aggregator: GramianWeighting | None = None,
        *,
        alpha: float = 0.9,
        initial_weights: Tensor | None = None,
    ) -> None:
        super().__init__(MGDA() if aggregator is None else aggregator)
        self.alpha = alpha
        self.initial_weights = optional_vector(initial_weights, "initial_weights")
        self.register_buffer("smoothed", torch.zeros(0))

    @property
    def alpha(self) -> float:
        """The weight of the previous average, in [0, 1]."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {value!r}")
        self._alpha = float(value)

    def reset(self) -> None:
        """Restart the average (and reset the wrapped aggregator if it is stateful)."""
        super().reset()
        self.smoothed = torch.zeros(0, device=self.smoothed.device)

    def _weights(self, gramian: Tensor, /) -> Tensor:
        current = super()._weights(gramian)  # the wrapped weighting's public weights()
        k = current.shape[0]
        if self.smoothed.shape == (k,):
            previous = self.smoothed.to(current)
        elif self.initial_weights is not None:
            if self.initial_weights.shape[0] != k:
                raise ValueError(
                    f"initial_weights has {self.initial_weights.shape[0]} entries, expected K = {k}"
                )
            previous = self.initial_weights.to(current)
        else:
            previous = current
        self.smoothed = self._alpha * previous + (1.0 - self._alpha) * current
        return self.smoothed

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        self._check_saved_type(state_dict, prefix)  # before the resize: refused = untouched
        resize_buffers_for_load(self, state_dict, prefix, ["smoothed"])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"alpha={self._alpha}"
