"""Gradient accumulation windows: k micro-batches update statistics as one batch.

Without a window, a stateful policy (EQLv2, the monitor) updates its statistics after every
backward pass, so the second micro-batch of an accumulation window is weighted with statistics
that already include the first: k micro-batches then differ from one batch of the same samples.
Inside :func:`accumulation_window` every micro-batch sees the statistics of the window's start,
and the micro-batches' increments are committed once, when the window closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from labelgrad.policies.stateful import StatefulPolicy

__all__ = ["accumulation_window"]


@contextlib.contextmanager
def accumulation_window(*modules: nn.Module) -> Iterator[None]:
    """Treat the backward passes inside the block as the micro-batches of one batch.

    Every stateful policy found in ``modules`` (policies, or models that contain them) applies
    the weights of the state it had when the window opened, and commits the sum of the
    micro-batches' statistics when the window closes: its buffers then equal those of one
    backward pass over the concatenated batch (``"sum"`` statistics and per-batch counters; the
    monitor's ``last_norm`` and history hold the last micro-batch's values). A micro-batch with a
    non-finite gradient discards the statistics of the whole window, as a GradScaler skips the
    whole step. If the block raises, nothing is committed.

    Use it around the micro-batches of one optimizer step (open it again for the next step);
    ``RowRules.observe`` already unions present classes over a window by itself. Not supported
    inside a ``torch.compile``'d backward (open the window around the compiled call instead:
    the bookkeeping runs in eager Python).

    Args:
        modules: policies, or modules containing them.

    Raises:
        TypeError: an argument is not an ``nn.Module``.
        ValueError: a policy is already inside an open window.

    Example:
        >>> import torch, labelgrad as lg
        >>> policy = lg.eqlv2(num_classes=2)
        >>> y = torch.tensor([0, 1, 1, 0])
        >>> with lg.accumulation_window(policy):
        ...     for part in (slice(0, 2), slice(2, 4)):
        ...         z = torch.zeros(2, 2, requires_grad=True)
        ...         policy(z, y[part]).sum().backward()
        >>> policy.pos_grad.tolist(), policy.num_updates.item()
        ([2.0, 2.0], 1.0)
    """
    policies: list[StatefulPolicy] = []
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            raise TypeError(f"accumulation_window argument {i} must be an nn.Module, got {m!r}")
        policies.extend(p for p in m.modules() if isinstance(p, StatefulPolicy))
    policies = list({id(p): p for p in policies}.values())
    for p in policies:
        if p.window_open:
            raise ValueError(f"{type(p).__name__} is already inside an open accumulation window")
    for p in policies:
        p.open_window()
    committed = False
    try:
        yield
        committed = True
    finally:
        for p in policies:
            p.close_window(commit=committed)
