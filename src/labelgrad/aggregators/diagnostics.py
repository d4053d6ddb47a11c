"""Counters of a certified solver: how often its fast answer failed the optimality check."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SolverDiagnostics"]


class SolverDiagnostics(nn.Module):
    """Counts of a weighting's solves, kept as 0-d int64 tensors on the aggregator's device.

    Every weighting that solves an optimization problem checks its answer against the problem's
    optimality conditions (a certificate) and, where the check fails, recomputes the answer with
    a slower robust method. These counters say how often that happened. They are updated on the
    device (no host read) and are not saved in ``state_dict`` (they describe a run, not a model).

    Attributes:
        calls: calls of ``weights``.
        problems: problems solved (UPGrad solves K per call, the others one).
        fallbacks: problems whose fast answer failed the certificate (recomputed robustly).
        uncertified: problems whose robust answer failed it too (returned as documented by the
            aggregator; expected to stay 0).

    Example:
        >>> import torch
        >>> import labelgrad as lg
        >>> agg = lg.aggregators.UPGrad()
        >>> _ = agg.weights(torch.eye(3))
        >>> int(agg.diagnostics.calls), int(agg.diagnostics.problems), float(agg.diagnostics.rate)
        (1, 3, 0.0)
    """

    calls: Tensor
    problems: Tensor
    fallbacks: Tensor
    uncertified: Tensor

    def __init__(self) -> None:
        super().__init__()
        for name in ("calls", "problems", "fallbacks", "uncertified"):
            self.register_buffer(name, torch.zeros((), dtype=torch.int64), persistent=False)

    def record(self, problems: int, fallbacks: Tensor | int, uncertified: Tensor | int = 0) -> None:
        """Add one call of ``problems`` problems, ``fallbacks`` of which fell back (on device)."""
        self.calls.add_(1)
        self.problems.add_(problems)
        if not isinstance(fallbacks, int) or fallbacks:  # skip the no-op on the common path
            self.fallbacks.add_(torch.as_tensor(fallbacks, device=self.fallbacks.device))
        if not isinstance(uncertified, int) or uncertified:
            self.uncertified.add_(torch.as_tensor(uncertified, device=self.uncertified.device))

    def reset(self) -> None:
        """Zero every counter."""
        for counter in (self.calls, self.problems, self.fallbacks, self.uncertified):
            counter.zero_()

    @property
    def rate(self) -> Tensor:
        """The fallback rate: ``fallbacks / problems`` (0 before any solve), a float64 tensor."""
        return self.fallbacks.double() / self.problems.clamp(min=1).double()

    def extra_repr(self) -> str:
        return ""
