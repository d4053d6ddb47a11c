"""A policy that records per-class gradient statistics and changes nothing."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad._validation import as_count
from labelgrad.policies.linear import LinearPolicy, Multiplier
from labelgrad.policies.policy import GradContext
from labelgrad.policies.stateful import StatefulPolicy

__all__ = ["GradMonitor", "monitor"]

_MAX_HISTORY_ENTRIES = 2**28  # float32 entries of the ring buffer: 1 GiB


class GradMonitor(StatefulPolicy, LinearPolicy):
    """Per-class statistics of the gradient at the logits. Built by :func:`monitor`.

    Buffers (float32; saved in ``state_dict``, summed over ranks):

    - ``num_batches``: batches recorded (non-finite batches are counted in ``num_nonfinite``
      instead);
    - ``pos_abs``, ``neg_abs`` (C,): accumulated |gradient| of positive and negative entries
      (only where labels are given);
    - ``sq_norm`` (C,): accumulated squared L2 norm of each class's gradient;
    - ``last_norm`` (C,): the L2 norm of each class's gradient in the latest batch;
    - ``history`` (H, C) with ``history_len``: a ring buffer of the latest H per-batch norms
      (bounded memory; H = ``history``, 0 keeps none).

    All statistics are of the unscaled gradient when a GradScaler is attached.
    """

    num_batches: Tensor
    num_nonfinite: Tensor
    pos_abs: Tensor
    neg_abs: Tensor
    sq_norm: Tensor
    last_norm: Tensor
    history: Tensor
    history_len: Tensor

    requires_targets = False
    observes_output = True

    def __init__(self, num_classes: int, *, history: int = 0) -> None:
        super().__init__()
        self.num_classes = as_count(num_classes, "num_classes")
        self.history_size = as_count(history, "history", minimum=0)
        entries = self.history_size * self.num_classes
        if entries > _MAX_HISTORY_ENTRIES:
            # Refused before allocating: a typo (history=10**12, or a label typo that makes C
            # huge) would otherwise ask for terabytes.
            raise ValueError(
                f"history={history} x num_classes={num_classes} needs {entries * 4 / 2**30:.3g} "
                f"GiB for the norm ring buffer, more than its {_MAX_HISTORY_ENTRIES * 4 / 2**30:g}"
                " GiB limit: lower history"
            )
        c = num_classes
        self.add_state("num_batches", torch.zeros((), dtype=torch.float32), window="count")
        self.add_state("num_nonfinite", torch.zeros((), dtype=torch.float32), window="any")
        self.add_state("pos_abs", torch.zeros(c, dtype=torch.float32))
        self.add_state("neg_abs", torch.zeros(c, dtype=torch.float32))
        self.add_state("sq_norm", torch.zeros(c, dtype=torch.float32))
        self.add_state("last_norm", torch.zeros(c, dtype=torch.float32), window="last")
        self.add_state("history", torch.zeros(history, c, dtype=torch.float32), window="last")
        self.add_state("history_len", torch.zeros((), dtype=torch.long), window="last")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, history={self.history_size}"

    def expected_num_classes(self) -> int | None:
        return self.num_classes

    def mean_norm(self) -> Tensor:
        """Root of the mean squared per-class gradient norm over recorded batches, (C,)."""
        return (self.sq_norm / self.num_batches.clamp(min=1)).sqrt()

    def recent_norms(self) -> Tensor:
        """The recorded per-batch norms, oldest first, shape (min(H, batches), C).

        Reads the ring buffer's length back to the host: call it for reporting, not per step.
        """
        n = int(self.history_len)
        h = self.history_size
        if h == 0 or n == 0:
            return self.history[:0]
        if n <= h:
            return self.history[:n].clone()
        start = n % h
        return torch.cat([self.history[start:], self.history[:start]])

    def multiplier(self, grad: Tensor, ctx: GradContext) -> Multiplier:
        return Multiplier()  # the gradient passes unchanged

    def observe(self, out: Tensor, ctx: GradContext, applied: Multiplier) -> None:
        if not ctx.update_state:
            return
        g = ctx.unscale(out.detach().float())
        sq = g.square().sum(dim=(0, 1))
        if ctx.targets is not None:
            t = ctx.targets
            mag = g.abs()
            pos = torch.where(t.positive, mag, 0.0).sum(dim=(0, 1))
            neg = torch.where(t.known & ~t.positive, mag, 0.0).sum(dim=(0, 1))
        else:
            pos = neg = torch.zeros_like(sq)
        sq, pos, neg = self.reduce_increments(sq, pos, neg)
        ok = self.all_finite(sq, pos, neg)
        self.num_batches.add_(ok.float())
        self.num_nonfinite.add_((~ok).float())
        self.sq_norm.add_(torch.where(ok, sq, 0.0))
        self.pos_abs.add_(torch.where(ok, pos, 0.0))
        self.neg_abs.add_(torch.where(ok, neg, 0.0))
        norm = sq.sqrt()
        self.last_norm.copy_(norm)
        if self.history_size:
            # index_copy at a device-side position: no host sync per step.
            pos_idx = (self.history_len % self.history_size).reshape(1)
            self.history.index_copy_(0, pos_idx, norm.unsqueeze(0))
            self.history_len.add_(1)


def monitor(num_classes: int, *, history: int = 0) -> GradMonitor:
    """Record per-class gradient statistics at the logits; the gradient passes unchanged.

    Args:
        num_classes: C.
        history: keep the per-batch norms of the latest ``history`` batches (ring buffer).

    Example:
        >>> import torch, labelgrad as lg
        >>> mon = lg.monitor(num_classes=2, history=8)
        >>> z = torch.zeros(4, 2, requires_grad=True)
        >>> mon(z, torch.tensor([0, 1, 1, 1])).sum().backward()
        >>> mon.last_norm.tolist(), mon.pos_abs.tolist()
        ([2.0, 2.0], [1.0, 3.0])
    """
    return GradMonitor(num_classes, history=history)
