"""The demo's training runs: how much it trains (:class:`Sizes`), one run of a method on
digits-LT or Yeast, and the interleaved step timings.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

import labelgrad as lg
from labelgrad.app.datasets import Dataset, digits_lt
from labelgrad.app.demo_tables import Row, nan_median
from labelgrad.app.metrics import multilabel_metrics, per_class_recall, shot_group_accuracy
from labelgrad.app.recipes import MULTILABEL_METHODS, StepFn, long_tail_recipe, multilabel_step
from labelgrad.app.training import MLP, epoch_batches


@dataclass(frozen=True)
class Sizes:
    """How much the demo trains (``full`` for ``make demo``, ``tiny`` for tests)."""

    seeds: int
    digits_epochs: int
    yeast_epochs: int
    yeast_limit: int | None
    timing_steps: int = 30
    batch_size: int = 64
    yeast_batch_size: int = 128


SIZES = {
    "full": Sizes(seeds=3, digits_epochs=40, yeast_epochs=15, yeast_limit=None),
    "tiny": Sizes(seeds=2, digits_epochs=1, yeast_epochs=1, yeast_limit=300, timing_steps=2),
}


@dataclass
class MethodRun:
    metrics: dict[str, float]
    per_class: list[float]
    step_ms: float
    history: list[list[float]]
    model: MLP
    monitor: lg.GradMonitor


def _interleaved_ms(
    steps: dict[str, StepFn], xb: Tensor, yb: Tensor, sizes: Sizes, device: torch.device
) -> dict[str, float]:
    """Median ms per training step of each method on one fixed batch, timed round-robin.

    Separate training runs on a shared machine see different load; timing the methods in
    turn, in one loop, lets the load hit each alike (the ``labelgrad.app.bench`` convention).
    """
    from labelgrad.app.bench import interleaved

    cases = {name: (lambda fn=fn: fn(xb, yb)) for name, fn in steps.items()}
    times = interleaved(cases, steps=sizes.timing_steps, warmup=3, device=device)
    return {name: 1000 * t for name, t in times.items()}


def set_timings(
    rows: list[Row],
    steps: dict[str, StepFn],
    ds: Dataset,
    y_train: Tensor,
    sizes: Sizes,
    device: torch.device,
) -> None:
    """Fill ``timed_ms`` / ``timed_ratio`` (to the first method) of one experiment's rows."""
    size = sizes.batch_size if ds.task == "multiclass" else sizes.yeast_batch_size
    xb, yb = ds.x_train[:size].to(device), y_train[:size].to(device)
    times = _interleaved_ms(steps, xb, yb, sizes, device)
    base = times[rows[0].method]
    for row in rows:
        row.timed_ms = times[row.method]
        row.timed_ratio = times[row.method] / base


def _timed_epochs(
    n: int, batch_size: int, epochs: int, seed: int, step: StepFn, x: Tensor, y: Tensor
) -> float:
    times = []
    for epoch in range(epochs):
        for idx in epoch_batches(n, batch_size, seed=seed, epoch=epoch):
            t0 = time.perf_counter()
            step(x[idx], y[idx])
            times.append(time.perf_counter() - t0)
    return 1000 * nan_median(times)


def digits_setup(
    ds: Dataset, method: str, seed: int, sizes: Sizes, device: torch.device
) -> tuple[MLP, lg.GradMonitor, StepFn]:
    """A fresh model and one training step of ``method`` (a long-tail recipe) on digits-LT."""
    torch.manual_seed(seed)
    c = ds.num_classes
    model = MLP(ds.num_features, [128], c).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = sizes.digits_epochs * math.ceil(len(ds.x_train) / sizes.batch_size)
    mon = lg.monitor(num_classes=c, history=steps)
    recipe = long_tail_recipe(
        method, model.head, opt, ds.train_counts(), total_steps=steps, monitor=mon
    )
    return model, mon, recipe.step(model)


def digits_run(
    ds: Dataset, method: str, seed: int, sizes: Sizes, device: torch.device
) -> MethodRun:
    model, mon, step = digits_setup(ds, method, seed, sizes, device)
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    step_ms = _timed_epochs(len(x), sizes.batch_size, sizes.digits_epochs, seed, step, x, y)
    with torch.no_grad():
        pred = model(ds.x_test.to(device)).argmax(dim=1).cpu()
    recall = per_class_recall(pred, ds.y_test, ds.num_classes)
    return MethodRun(
        metrics={
            "balanced_acc": float(recall.nanmean()),
            "few_shot_acc": shot_group_accuracy(recall, ds.train_counts())["few"],
        },
        per_class=recall.tolist(),
        step_ms=step_ms,
        history=mon.recent_norms().tolist(),
        model=model,
        monitor=mon,
    )


def digits_lt_run(
    seed: int, *, imbalance: float, method: str, sizes: Sizes, device: torch.device
) -> MethodRun:
    """:func:`digits_run` on the digits-LT cut of ``seed``."""
    return digits_run(digits_lt(imbalance=imbalance, seed=seed), method, seed, sizes, device)


def yeast_setup(
    ds: Dataset, method: str, seed: int, device: torch.device, y_train: Tensor
) -> tuple[MLP, lg.GradMonitor, StepFn]:
    """A fresh model and one training step of ``method`` (a multi-label recipe) on Yeast."""
    torch.manual_seed(seed)
    k = ds.num_classes
    model = MLP(ds.num_features, [128], k).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = lg.monitor(num_classes=k)
    monitor = mon if method in MULTILABEL_METHODS else None  # aggregators bypass the policy
    return model, mon, multilabel_step(method, model, opt, y_train, monitor=monitor)


def yeast_run(
    ds: Dataset, method: str, seed: int, sizes: Sizes, device: torch.device, y_train: Tensor
) -> MethodRun:
    model, mon, step = yeast_setup(ds, method, seed, device, y_train)
    x, y = ds.x_train.to(device), y_train.to(device)
    step_ms = _timed_epochs(len(x), sizes.yeast_batch_size, sizes.yeast_epochs, seed, step, x, y)
    with torch.no_grad():
        scores = torch.sigmoid(model(ds.x_test.to(device))).cpu()
    metrics, per_label_f1 = multilabel_metrics(scores, ds.y_test)
    kept = {k: metrics[k] for k in ("map", "macro_f1")}
    return MethodRun(kept, per_label_f1.tolist(), step_ms, [], model, mon)
