"""The outcomes benchmark: does label-aware gradient control make models better on real data?

Three experiments, every method trained with one fixed recipe per experiment (same model, epochs,
optimizer, learning rate, batch size, seeds; nothing tuned per method), mean ± std over seeds.
The recipes and their constants are :mod:`labelgrad.app.recipes`, the metrics
:mod:`labelgrad.app.metrics`: the same as ``labelgrad demo`` and ``labelgrad train`` use.

(a) Long tail: Fashion-MNIST-LT (CIFAR-LT protocol, IF = 100 and 10, the official balanced test
    set), or digits-LT where Fashion-MNIST is not installed, with a small CNN. Methods: plain
    cross-entropy; ``class_weights`` with effective-number weights; deferred
    re-weighting (``schedule(class_weights(...), start_step=...)``); plain sigmoid BCE and
    ``eqlv2`` with sigmoid BCE; ``RowRules`` with a larger step for tail rows; the logit-adjusted
    loss (Menon et al., ICLR 2021, tau = 1) as the literature's reference point. Metrics:
    balanced accuracy; many/medium/few-shot accuracy (> 100, 20..100, < 20 training images).
    The surrogate-gradient policies ``logit_adjust`` and ``seesaw`` (and ``logit_adjust`` with
    the ``RowRules`` recipe) run under plain cross-entropy.
(b) Partial labels: Yeast with 30/50/70 % of the training labels hidden: unknown-as-negative vs
    ``mask_unknown`` vs ``mask_unknown`` + ``class_weights`` vs ``asymmetric_focus`` with and
    without ``mask_unknown``. Metrics: mAP, macro-F1, micro-F1.
(c) Conflicting labels: Yeast, the plain summed loss vs PCGrad, UPGrad and MGDA on the shared
    trunk (``aggregate_backward`` with the representation and the exact engine). Metrics:
    macro-F1, worst-label AP, median step time.
(d) Class-incremental: digits in 5 tasks of 2 classes with a small replay memory: fine-tuning vs
    ``RowRules`` (old rows frozen) vs A-GEM (``project_replay``) vs both, and the labels trick
    (ER-ACE) alone and with A-GEM (:mod:`labelgrad.app.bench.incremental`). Metrics: average
    accuracy, forgetting and learning accuracy.

Outputs (in ``out``): ``outcomes.csv``, ``outcomes.json``, PNG plots and ``results.md`` (the
tables, the plots, the goals and whether they were met, the machine and the command).

The methods, sizes and records are :mod:`labelgrad.app.bench.outcomes_setup`, the outputs
:mod:`labelgrad.app.bench.outcomes_report` (figures: :mod:`labelgrad.app.bench.outcomes_plots`);
this module trains.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from labelgrad.app.bench.incremental import INCREMENTAL_METHODS, incremental_run
from labelgrad.app.bench.outcomes_report import markdown_tables, write_outputs
from labelgrad.app.bench.outcomes_setup import (
    CI_EXPERIMENT,
    LT_METHODS,
    PARTIAL_METHODS,
    SIZES,
    OutcomesResult,
    Record,
    Sizes,
    SmallCNN,
)
from labelgrad.app.datasets import (
    Dataset,
    MissingSourceError,
    digits_lt,
    fashion_mnist_lt,
    hide_labels,
    yeast,
)
from labelgrad.app.metrics import multilabel_metrics, per_class_recall, shot_group_accuracy
from labelgrad.app.outputs import record_output
from labelgrad.app.recipes import long_tail_recipe, multilabel_step
from labelgrad.app.training import (
    MLP,
    epoch_batches,
    prepare_run,
    progress_bar,
    small_model_threads,
)

__all__ = ["run_outcomes"]


# --- training loops ---------------------------------------------------------------------------


def _epochs(n: int, batch: int, epochs: int, seed: int, step: Callable[[Tensor], None]) -> float:
    """Run ``epochs`` epochs of ``step(index_batch)``; return the median step time in ms."""
    times = []
    for epoch in range(epochs):
        for idx in epoch_batches(n, batch, seed=seed, epoch=epoch):
            t0 = time.perf_counter()
            step(idx)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) if times else math.nan


def _load_lt(imbalance: float, seed: int, sizes: Sizes) -> tuple[Dataset, int, str]:
    """Fashion-MNIST-LT where installed, else digits-LT: (dataset, image side, source name)."""
    if not sizes.fashion:
        return digits_lt(imbalance, seed=seed), 8, "digits-LT"
    try:
        ds = fashion_mnist_lt(
            imbalance, seed=seed, n_max=sizes.lt_n_max, test_per_class=sizes.lt_test_per_class
        )
        return ds, 28, "Fashion-MNIST-LT"
    except MissingSourceError:
        return digits_lt(imbalance, seed=seed), 8, "digits-LT"


def _lt_run(
    ds: Dataset, side: int, method: str, seed: int, sizes: Sizes, dev: torch.device
) -> tuple[dict[str, float], Tensor]:
    torch.manual_seed(seed)
    model = SmallCNN(side, ds.num_classes).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=sizes.lt_lr)
    n = len(ds.x_train)
    total_steps = sizes.lt_epochs * math.ceil(n / sizes.lt_batch)
    counts = ds.train_counts()
    step = long_tail_recipe(method, model.head, opt, counts, total_steps=total_steps).step(model)
    x = ds.x_train.view(n, 1, side, side).to(dev)
    y = ds.y_train.to(dev)
    model.train()
    _epochs(n, sizes.lt_batch, sizes.lt_epochs, seed, lambda idx: step(x[idx], y[idx]))
    model.eval()
    xt = ds.x_test.view(len(ds.x_test), 1, side, side)
    with torch.no_grad():
        pred = torch.cat([model(xb.to(dev)).argmax(1).cpu() for xb in xt.split(1000)])
    recall = per_class_recall(pred, ds.y_test, ds.num_classes)
    groups = shot_group_accuracy(recall, counts)
    metrics = {"balanced_acc": float(recall.nanmean())}
    metrics.update({f"{k}_acc": v for k, v in groups.items()})
    return metrics, recall


def _yeast_run(
    ds: Dataset, y_train: Tensor, method: str, seed: int, sizes: Sizes, dev: torch.device
) -> dict[str, float]:
    torch.manual_seed(seed)
    model = MLP(ds.num_features, [128], ds.num_classes).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=sizes.yeast_lr)
    step = multilabel_step(method, model, opt, y_train)
    x, y = ds.x_train.to(dev), y_train.to(dev)
    step_ms = _epochs(
        len(x), sizes.yeast_batch, sizes.yeast_epochs, seed, lambda idx: step(x[idx], y[idx])
    )
    with torch.no_grad():
        scores = torch.sigmoid(model(ds.x_test.to(dev))).cpu()
    out, _ = multilabel_metrics(scores, ds.y_test)
    out["step_ms"] = step_ms
    return out


OUTCOMES_FILES = (
    "lt_balanced_accuracy.png",
    "lt_per_class_if100.png",
    "yeast_partial_map.png",
    "yeast_aggregation.png",
    "incremental.png",
    "outcomes.csv",
    "outcomes.json",
    "results.md",
)
"""Every file the outcomes benchmark may write into its output folder."""


# --- the benchmark ----------------------------------------------------------------------------


def run_outcomes(
    *,
    size: str = "full",
    out: str | Path = "labelgrad-outcomes",
    device: str = "cpu",
    quiet: bool = False,
    echo: Callable[[str], None] | None = print,
    command: str = "labelgrad bench --outcomes",
    force: bool = False,
) -> OutcomesResult:
    """Run the three experiments, write the CSV, JSON, plots and results.md; return the results.

    Args:
        size: ``"full"``, ``"quick"`` (minutes on 2 CPU cores) or ``"tiny"`` (a smoke test).
        out: the output folder (created; checked writable before any training).
        device: where to train.
        quiet: no progress bar.
        echo: where the tables go (None: nowhere).
        command: the command line recorded in results.md.
        force: replace the files of another run in ``out``.

    Raises:
        ValueError: an unknown size.
        OutputError: ``out`` is empty, a file, or holds another run (without ``force``).
        PermissionError: ``out`` cannot be written.
    """
    sizes, dev, folder = prepare_run(
        SIZES, size, device, out, command="outcomes", identity="", files=OUTCOMES_FILES, force=force
    )
    with small_model_threads(dev):
        result = _run(sizes, size, dev, folder, quiet, echo)
        record_output(folder, write_outputs(result, command))
    if echo is not None:
        echo(markdown_tables(result))
        echo(f"files in {folder}: {', '.join(result.files)} ({result.seconds:.0f} s)")
    return result


def _bar(total: int, quiet: bool) -> Any:
    return progress_bar(total, quiet=quiet, desc="outcomes", unit="run", leave=False)


def _run(
    sizes: Sizes,
    size: str,
    dev: torch.device,
    folder: Path,
    quiet: bool,
    echo: Callable[[str], None] | None,
) -> OutcomesResult:
    t0 = time.perf_counter()
    seeds = list(range(sizes.seeds))
    total = len(seeds) * (
        len(sizes.imbalances) * len(LT_METHODS)
        + len(sizes.hidden) * len(PARTIAL_METHODS)
        + len(sizes.agg_methods)
        + len(INCREMENTAL_METHODS)
    )
    bar = _bar(total, quiet)
    records: list[Record] = []
    result = OutcomesResult(records, folder, "", size)
    try:
        for imb in sizes.imbalances:
            _run_long_tail(result, imb, seeds, sizes, dev, bar)
        for frac in sizes.hidden:
            records.extend(_run_partial(frac, seeds, sizes, dev, bar))
        records.extend(_run_aggregation(seeds, sizes, dev, bar))
        records.extend(_run_incremental(seeds, sizes, dev, bar))
    finally:
        bar.close()
    result.seconds = time.perf_counter() - t0
    return result


def _run_long_tail(
    result: OutcomesResult, imb: float, seeds: list[int], sizes: Sizes, dev: torch.device, bar: Any
) -> None:
    """The long-tail methods at one imbalance factor: records and per-class recall into
    ``result``."""
    recs = {m: Record("", m) for m in LT_METHODS}
    per_class: dict[str, list[Tensor]] = {m: [] for m in LT_METHODS}
    for s in seeds:
        ds, side, source = _load_lt(imb, s, sizes)
        result.lt_source = source
        result.class_names = list(ds.class_names)
        if s == 0:
            result.lt_counts[f"IF={imb:g}"] = ds.train_counts().tolist()
        for m in LT_METHODS:
            bar.set_postfix_str(f"{source} IF={imb:g} {m} seed={s}")
            metrics, recall = _lt_run(ds, side, m, s, sizes, dev)
            recs[m].add(metrics)
            per_class[m].append(recall)
            bar.update()
    for m in LT_METHODS:
        recs[m].experiment = f"{result.lt_source} IF={imb:g}"
        result.records.append(recs[m])
        stacked = torch.stack(per_class[m])
        result.per_class[f"IF={imb:g}/{m}"] = stacked.nanmean(0).tolist()
        sd = stacked.std(0) if len(seeds) > 1 else torch.zeros_like(stacked[0])
        result.per_class_std[f"IF={imb:g}/{m}"] = sd.nan_to_num(0.0).tolist()


def _run_partial(
    frac: float, seeds: list[int], sizes: Sizes, dev: torch.device, bar: Any
) -> list[Record]:
    """The partial-label methods on Yeast with ``frac`` of the labels hidden."""
    recs = {m: Record(f"Yeast, {frac:.0%} hidden", m) for m in PARTIAL_METHODS}
    for s in seeds:
        ds = yeast(seed=s).head(sizes.yeast_limit)
        hidden = hide_labels(ds.y_train, frac, seed=s)
        for m in PARTIAL_METHODS:
            bar.set_postfix_str(f"Yeast {frac:.0%} hidden {m} seed={s}")
            recs[m].add(_yeast_run(ds, hidden, m, s, sizes, dev))
            bar.update()
    return list(recs.values())


def _run_aggregation(seeds: list[int], sizes: Sizes, dev: torch.device, bar: Any) -> list[Record]:
    """The label-aggregation methods on Yeast with every label."""
    recs = {m: Record("Yeast, label aggregation", m) for m in sizes.agg_methods}
    for s in seeds:
        ds = yeast(seed=s).head(sizes.yeast_limit)
        for m in sizes.agg_methods:
            bar.set_postfix_str(f"Yeast aggregation {m} seed={s}")
            recs[m].add(_yeast_run(ds, ds.y_train, m, s, sizes, dev))
            bar.update()
    return list(recs.values())


def _run_incremental(seeds: list[int], sizes: Sizes, dev: torch.device, bar: Any) -> list[Record]:
    """The class-incremental methods on digits."""
    recs = {m: Record(CI_EXPERIMENT, m) for m in INCREMENTAL_METHODS}
    for s in seeds:
        for m in INCREMENTAL_METHODS:
            bar.set_postfix_str(f"class-incremental {m} seed={s}")
            kw = {"epochs": sizes.ci_epochs, "memory_per_class": sizes.ci_memory}
            recs[m].add(incremental_run(m, s, device=dev, **kw))
            bar.update()
    return list(recs.values())
