"""Byzantine-robust aggregators: Krum (a weighting) and TrimmedMean (needs the Jacobian)."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.aggregators.aggregator_types import GramianWeighting, JacobianAggregator

__all__ = ["Krum", "TrimmedMean"]


def _check_count(value: object, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} or None, got {value!r}")
    return value


class Krum(GramianWeighting):
    r"""(Multi-)Krum (Blanchard et al., `Machine Learning with Adversaries: Byzantine Tolerant
    Gradient Descent <https://proceedings.neurips.cc/paper/2017/hash/f4b9ec30ad9f68f89b29639786cb62ef-Abstract.html>`_),
    as TorchJD 0.18's ``KrumWeighting``.

    With distances ``d_ij = sqrt(G_ii + G_jj - 2 G_ij)``, row ``i``'s score is the sum of its
    ``K - f - 2`` smallest distances to the other rows; the ``n_selected`` rows of lowest score
    get weight ``1 / n_selected`` each, the others 0 (mean scale). Needs ``K >= f + 3`` and
    ``K >= n_selected``, as TorchJD.

    TorchJD requires ``n_byzantine``; here ``None`` (the default) takes, for the K read from the
    Gramian, the largest ``f`` for which the paper's resilience result holds (``2 f + 2 < K``):
    ``f = (K - 3) // 2``.

    Args:
        n_byzantine: the number ``f`` of rows that may be adversarial, or None (see above).
        n_selected: how many rows Multi-Krum averages (1: Krum).

    Example:
        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [1.2, 0.0], [0.9, 0.0], [1.0, 0.3], [-9.0, 5.0]])
        >>> Krum(n_byzantine=1).weights(J @ J.T)  # the most central row
        tensor([1., 0., 0., 0., 0.])
        >>> Krum(n_byzantine=1, n_selected=2).weights(J @ J.T)  # Multi-Krum: never the outlier
        tensor([0.5000, 0.0000, 0.5000, 0.0000, 0.0000])
    """

    def __init__(self, *, n_byzantine: int | None = None, n_selected: int = 1) -> None:
        super().__init__()
        self.n_byzantine = _check_count(n_byzantine, "n_byzantine", 0)
        checked = _check_count(n_selected, "n_selected", 1)
        assert checked is not None
        self.n_selected = checked

    def _byzantine(self, k: int) -> int:
        f = max((k - 3) // 2, 0) if self.n_byzantine is None else self.n_byzantine
        if k < f + 3:
            raise ValueError(f"Krum with n_byzantine = {f} needs K >= {f + 3} rows, got K = {k}")
        if k < self.n_selected:
            raise ValueError(f"Krum needs K >= n_selected = {self.n_selected} rows, got K = {k}")
        return f

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        f = self._byzantine(k)
        diag = gramian.diagonal()
        dist = (diag.unsqueeze(0) + diag.unsqueeze(1) - 2 * gramian).clamp(min=0).sqrt()
        # The k - f - 1 smallest include the zero distance to itself.
        # TorchJD's order of summation (the zero first dropped), so that near-ties break alike.
        scores = torch.topk(dist, k=k - f - 1, largest=False).values[:, 1:].sum(dim=1)
        chosen = torch.topk(scores, k=self.n_selected, largest=False).indices
        weights = torch.zeros(k, dtype=gramian.dtype, device=gramian.device)
        return weights.index_fill(0, chosen, 1.0 / self.n_selected)

    def extra_repr(self) -> str:
        return f"n_byzantine={self.n_byzantine}, n_selected={self.n_selected}"


class TrimmedMean(JacobianAggregator):
    r"""Coordinate-wise trimmed mean (Yin et al., `Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates <https://proceedings.mlr.press/v80/yin18a.html>`_), as TorchJD 0.18.

    In every coordinate, the ``trim_number`` largest and the ``trim_number`` smallest of the K
    values are dropped and the rest averaged (mean scale). Needs ``K >= 2 trim_number + 1``.

    TorchJD requires ``trim_number``; the paper trims a fraction ``β`` (any ``β < 1/2`` at least
    the fraction of adversarial rows) and fixes none. Here ``None`` (the default) takes
    ``β = 0.1``: ``trim_number = floor(K / 10)`` for the K read from the Jacobian (no trimming
    below K = 10, where it equals :class:`Mean`'s update).

    Args:
        trim_number: values dropped at each end of every coordinate, or None (see above).

    Example:
        >>> import torch
        >>> J = torch.tensor([[1.0, -5.0], [2.0, 0.0], [100.0, 1.0]])
        >>> TrimmedMean(trim_number=1).aggregate(J)  # the coordinate-wise median here
        tensor([2., 0.])
    """

    def __init__(self, *, trim_number: int | None = None) -> None:
        super().__init__()
        self.trim_number = _check_count(trim_number, "trim_number", 0)

    def _aggregate(self, jacobian: Tensor, /) -> Tensor:
        k = jacobian.shape[0]
        trim = k // 10 if self.trim_number is None else self.trim_number
        if k < 2 * trim + 1:
            raise ValueError(
                f"TrimmedMean with trim_number = {trim} needs K >= {2 * trim + 1} rows, got K = {k}"
            )
        kept = torch.sort(jacobian, dim=0).values.narrow(0, trim, k - 2 * trim)
        return kept.mean(dim=0)

    def extra_repr(self) -> str:
        return f"trim_number={self.trim_number}"
