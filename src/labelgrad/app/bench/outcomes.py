"""The outcomes benchmark: does label-aware gradient control make models better on real data?

Four experiments, mean ± std over seeds:

(a) Long tail (:mod:`labelgrad.app.bench.outcomes_lt`): Fashion-MNIST-LT (CIFAR-LT protocol,
    IF = 100 and 10, a balanced validation split carved from the official training images, the
    official balanced test set), or digits-LT where Fashion-MNIST is not installed, with a small
    CNN. Every run trains until its validation balanced accuracy has plateaued; every method's
    hyperparameters are chosen on the validation split by the same coordinate search; 5 seeds.
    Methods: plain cross-entropy, the logit-adjusted loss (the literature's reference),
    tau-normalisation, weight balancing (stage 2 with ``lg.RowRules`` weight decay and MaxNorm)
    and weight balancing with the ``logit_adjust`` gradient in stage 2. Metrics: balanced
    accuracy; many/medium/few-shot accuracy (> 100, 20..100, < 20 training images).
(b) Partial labels: Yeast with 30/50/70 % of the training labels hidden: unknown-as-negative vs
    ``mask_unknown`` vs ``mask_unknown`` + ``class_weights`` vs ``asymmetric_focus`` with and
    without ``mask_unknown``. Metrics: mAP, macro-F1, micro-F1. One fixed recipe.
(c) Conflicting labels: Yeast, the plain summed loss vs PCGrad, UPGrad and MGDA on the shared
    trunk (``aggregate_backward`` with the representation and the exact engine). Metrics:
    macro-F1, worst-label AP, median step time. One fixed recipe.
(d) Class-incremental on the standard protocol (:mod:`labelgrad.app.bench.incremental`): digits
    in 5 tasks of 2 classes, a reservoir replay memory; fine-tuning, ER, ER-ACE and A-GEM, each
    alone, with weight aligning and with frozen old rows, and joint training as the ceiling.
    Metrics: average accuracy, forgetting and learning accuracy.

Outputs (in ``out``): ``outcomes.csv``, ``outcomes.json``, PNG plots and ``results.md`` (the
tables, the chosen configurations, the plots, the goals and whether they were met, the machine
and the command).

The methods, sizes and records are :mod:`labelgrad.app.bench.outcomes_setup`, the outputs
:mod:`labelgrad.app.bench.outcomes_report` (figures: :mod:`labelgrad.app.bench.outcomes_plots`);
this module runs the experiments.
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
from labelgrad.app.bench.outcomes_lt import run_long_tail
from labelgrad.app.bench.outcomes_report import markdown_tables, write_outputs
from labelgrad.app.bench.outcomes_setup import (
    CI_EXPERIMENT,
    PARTIAL_METHODS,
    SIZES,
    OutcomesResult,
    Record,
    Sizes,
)
from labelgrad.app.datasets import (
    Dataset,
    hide_labels,
    yeast,
)
from labelgrad.app.metrics import multilabel_metrics
from labelgrad.app.outputs import record_output
from labelgrad.app.recipes import multilabel_step
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
    out: str | Path = "labelgrad-out/outcomes",
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
    # Full long-tail trainings: about 8 to tune on seed 0 and 2 per further seed.
    total = (
        len(sizes.imbalances) * (8 + 2 * (sizes.lt_seeds - 1))
        + len(seeds) * (len(sizes.hidden) * len(PARTIAL_METHODS) + len(sizes.agg_methods))
        + sizes.ci_seeds * len(INCREMENTAL_METHODS)
    )
    bar = _bar(total, quiet)
    records: list[Record] = []
    result = OutcomesResult(records, folder, "", size)
    try:
        for imb in sizes.imbalances:
            _run_long_tail(result, imb, sizes, dev, bar)
        for frac in sizes.hidden:
            records.extend(_run_partial(frac, seeds, sizes, dev, bar))
        records.extend(_run_aggregation(seeds, sizes, dev, bar))
        records.extend(_run_incremental(sizes, dev, bar))
    finally:
        bar.close()
    result.seconds = time.perf_counter() - t0
    return result


def _run_long_tail(
    result: OutcomesResult, imb: float, sizes: Sizes, dev: torch.device, bar: Any
) -> None:
    """The long-tail methods at one imbalance factor (:mod:`.outcomes_lt`): records, chosen
    configurations and per-class recall into ``result``."""

    def tick(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update()

    runs, data = run_long_tail(imb, sizes, dev, tick)
    result.lt_source = data.source
    result.class_names = list(data.class_names)
    key = f"IF={imb:g}"
    result.lt_counts[key] = data.counts.tolist()
    for run in runs:
        rec = Record(f"{data.source} {key}", run.method)
        for m in run.metrics:
            rec.add(m)
        result.records.append(rec)
        result.lt_configs[f"{key}/{run.method}"] = run.config
        result.lt_grids[f"{key}/{run.method}"] = [
            {**cfg, "val_balanced_acc": v} for cfg, v in run.grid_val
        ]
        stacked = torch.stack(run.recalls)
        result.per_class[f"{key}/{run.method}"] = stacked.nanmean(0).tolist()
        sd = stacked.std(0) if len(run.recalls) > 1 else torch.zeros_like(stacked[0])
        result.per_class_std[f"{key}/{run.method}"] = sd.nan_to_num(0.0).tolist()


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


def _run_incremental(sizes: Sizes, dev: torch.device, bar: Any) -> list[Record]:
    """The class-incremental methods on digits."""
    recs = {m: Record(CI_EXPERIMENT, m) for m in INCREMENTAL_METHODS}
    for s in range(sizes.ci_seeds):
        for m in INCREMENTAL_METHODS:
            bar.set_postfix_str(f"class-incremental {m} seed={s}")
            kw = {"epochs": sizes.ci_epochs, "memory_per_class": sizes.ci_memory}
            recs[m].add(incremental_run(m, s, device=dev, **kw))
            bar.update()
    return list(recs.values())
