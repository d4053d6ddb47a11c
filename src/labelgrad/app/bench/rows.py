"""Benchmark of level 2: the cost of RowRules over the bare optimizer.

An MLP trunk with a 2048 x 1000 classifier head (C = 1000) trained with AdamW (foreach). The
RowRules case freezes half the classes, gives every class its own lr scale and skips classes absent
from the batch (``skip_absent=True``): every rule at once. Two timings: the whole training step
(forward, backward, optimizer step) and the optimizer step alone (the same gradients every time),
each as interleaved medians in one process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from labelgrad.app.bench.timing import Result, interleaved, ratios
from labelgrad.rows import RowRules

__all__ = ["run"]

_LOSS = nn.CrossEntropyLoss()


def _setup(
    width: int, num_classes: int, in_features: int, seed: int
) -> tuple[nn.Sequential, nn.Linear]:
    torch.manual_seed(seed)
    head = nn.Linear(width, num_classes)
    model = nn.Sequential(
        nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), head
    )
    return model, head


def run(quick: bool = False, state: str = "warm") -> list[Result]:
    """Time RowRules (AdamW, half the classes frozen, lr_scale, skip_absent) against bare AdamW.

    Args:
        quick: a small model and few steps (a smoke test, seconds).
        state: ``"warm"``: two steps of earlier training on every class first, so every row has
            optimizer state; ``"zero"``: no earlier training and the batches hold only the first
            eighth of the classes (a new head in class-incremental learning): the Adam moments
            of frozen rows and of classes never seen stay exactly 0.

    Returns:
        Rows of two benchmarks, ``rows/train_step`` and ``rows/optimizer_step`` (with
        ``_zero_state`` appended for ``state="zero"``), with the cases
        ``adamw`` (the baseline), ``row_rules`` (the Adam/AdamW fast path) and
        ``row_rules_snapshot`` (the generic snapshot path).

    Example:
        >>> rows = run(quick=True)
        >>> sorted({r.case for r in rows})
        ['adamw', 'row_rules', 'row_rules_snapshot']
    """
    if state not in ("warm", "zero"):
        raise ValueError(f"state must be 'warm' or 'zero', got {state!r}")
    width, num_classes, in_features, batch = (64, 100, 32, 32) if quick else (2048, 1000, 512, 128)
    steps, warmup = (3, 1) if quick else (30, 5)
    torch.manual_seed(0)
    # A pool of batches, the same sequence for every case: repeating one batch drives the loss to
    # zero and the moments into denormals, which slows CPU kernels unevenly across cases.
    xs = torch.randn(8, batch, in_features)
    seen = num_classes if state == "warm" else num_classes // 8
    ys = torch.randint(0, seen, (8, batch))
    rules = {"frozen": torch.arange(0, num_classes, 2), "lr_scale": torch.rand(num_classes) + 0.5}
    kinds = ("adamw", "row_rules", "row_rules_snapshot")
    built = {kind: _make(kind, width, num_classes, xs, rules, state == "warm") for kind in kinds}

    flush = torch.set_flush_denormal(True)  # both cases alike; see above
    try:
        train = interleaved(
            {k: _train_step(*built[k], xs, ys) for k in kinds}, steps=steps, warmup=warmup
        )
        step_only = interleaved(
            {k: _optimizer_step(*built[k], xs[0], ys[0]) for k in kinds}, steps=steps, warmup=warmup
        )
    finally:
        if flush:
            torch.set_flush_denormal(False)

    extra = {
        "head": f"{width}x{num_classes}",
        "batch": batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "state": state,
    }
    suffix = "" if state == "warm" else "_zero_state"
    return ratios(f"rows/train_step{suffix}", train, "adamw", **extra) + ratios(
        f"rows/optimizer_step{suffix}", step_only, "adamw", **extra
    )


def _make(
    kind: str, width: int, num_classes: int, xs: Tensor, rules: dict[str, Tensor], warm: bool
) -> tuple[nn.Sequential, torch.optim.Optimizer]:
    """The model and optimizer of one case, after two steps of earlier training if ``warm``."""
    batch, in_features = xs.shape[1:]
    model, head = _setup(width, num_classes, in_features, seed=1)
    opt: torch.optim.Optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, weight_decay=0.05, foreach=True
    )
    # Earlier training (every class seen): every row has optimizer state, as in class-
    # incremental learning. Without it (state="zero") the moments of rows that never move stay
    # exactly 0, on which sqrt takes a slow path on some CPUs.
    for k in range(2 if warm else 0):
        opt.zero_grad()
        _LOSS(model(xs[k]), torch.arange(batch) % num_classes).backward()
        opt.step()
    if kind != "adamw":
        opt = RowRules(
            opt,
            rows=head,
            frozen=rules["frozen"],
            lr_scale=rules["lr_scale"],
            skip_absent=True,
            fast=kind == "row_rules",
        )
    return model, opt


def _step(opt: torch.optim.Optimizer, y: Tensor) -> None:
    if isinstance(opt, RowRules):
        opt.step(targets=y)
    else:
        opt.step()


def _train_step(
    model: nn.Module, opt: torch.optim.Optimizer, xs: Tensor, ys: Tensor
) -> Callable[[], None]:
    """A whole training step on the next batch of the pool."""
    count = [0]

    def fn() -> None:
        x, y = xs[count[0] % 8], ys[count[0] % 8]
        count[0] += 1
        opt.zero_grad()
        _LOSS(model(x), y).backward()
        _step(opt, y)

    return fn


def _optimizer_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor
) -> Callable[[], None]:
    """The optimizer step alone, on the gradients of one batch computed once."""
    opt.zero_grad()
    _LOSS(model(x), y).backward()
    return lambda: _step(opt, y)
