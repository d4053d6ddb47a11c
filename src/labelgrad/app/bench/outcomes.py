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
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.app.bench.incremental import INCREMENTAL_METHODS, incremental_run
from labelgrad.app.datasets import (
    Dataset,
    MissingSourceError,
    digits_lt,
    fashion_mnist_lt,
    hide_labels,
    yeast,
)
from labelgrad.app.metrics import (
    FEW_SHOT,
    MANY_SHOT,
    multilabel_metrics,
    per_class_recall,
    shot_group_accuracy,
)
from labelgrad.app.plots import _legend_outside, plot_per_class_accuracy, pyplot, save_figure
from labelgrad.app.recipes import (
    BETA,
    DRW_FRACTION,
    LA_TAU,
    LONG_TAIL_METHODS,
    TAIL_LR_POWER,
    long_tail_recipe,
    multilabel_step,
)
from labelgrad.app.training import (
    MLP,
    epoch_batches,
    prepare_run,
    progress_bar,
    small_model_threads,
)
from labelgrad.report import atomic_write_text

__all__ = [
    "AGG_METHODS",
    "BETA",
    "LT_METHODS",
    "PARTIAL_METHODS",
    "SIZES",
    "OutcomesResult",
    "Record",
    "Sizes",
    "SmallCNN",
    "run_outcomes",
]

LT_METHODS = LONG_TAIL_METHODS
"""Long-tail methods. ``plain_ce`` and ``plain_sigmoid`` are the baselines of the softmax and the
sigmoid methods; ``logit_adjusted`` is the literature's reference (not a labelgrad recipe)."""

LABELGRAD_LT = (
    "class_weights",
    "deferred_reweighting",
    "eqlv2",
    "row_rules",
    "logit_adjust",
    "seesaw",
    "logit_adjust+row_rules",
)
"""The long-tail methods that are labelgrad recipes."""

PARTIAL_METHODS = (
    "unknown_as_negative",
    "mask_unknown",
    "mask_unknown+class_weights",
    "asymmetric_focus",
    "mask_unknown+asymmetric_focus",
)
CI_EXPERIMENT = "digits, class-incremental (5 tasks of 2 classes)"
CI_METRICS = ("average_acc", "forgetting", "learning_acc")
AGG_METHODS = (
    "sum",
    "PCGrad/representation",
    "PCGrad/exact",
    "UPGrad/representation",
    "UPGrad/exact",
    "MGDA/representation",
    "MGDA/exact",
)


@dataclass(frozen=True)
class Sizes:
    """How much the benchmark trains (the same for every method of an experiment).

    Attributes:
        seeds: runs per method (seeds 0, 1, ...; the data cut and the model both follow the seed).
        lt_epochs: long-tail training epochs.
        lt_n_max: images of the largest long-tail class (CIFAR-LT protocol, n_max).
        lt_test_per_class: test images per class (None: the whole official test set).
        lt_batch: long-tail batch size.
        lt_lr: Adam learning rate of the long-tail runs.
        yeast_epochs: Yeast training epochs.
        yeast_limit: cap on Yeast train/test samples (None: all).
        hidden: fractions of Yeast training labels hidden.
        imbalances: the imbalance factors.
        agg_methods: the aggregation methods run.
        fashion: use Fashion-MNIST-LT where installed (False: always digits-LT).
        ci_epochs: class-incremental epochs per task.
        ci_memory: class-incremental replay images per class.
    """

    seeds: int
    lt_epochs: int
    lt_n_max: int
    lt_test_per_class: int | None
    yeast_epochs: int
    yeast_limit: int | None = None
    lt_batch: int = 64
    lt_lr: float = 2e-3
    yeast_batch: int = 128
    yeast_lr: float = 1e-3
    hidden: tuple[float, ...] = (0.3, 0.5, 0.7)
    imbalances: tuple[float, ...] = (100.0, 10.0)
    agg_methods: tuple[str, ...] = AGG_METHODS
    fashion: bool = True
    ci_epochs: int = 10
    ci_memory: int = 10


SIZES = {
    "full": Sizes(seeds=3, lt_epochs=8, lt_n_max=500, lt_test_per_class=None, yeast_epochs=15),
    "quick": Sizes(
        seeds=2, lt_epochs=3, lt_n_max=200, lt_test_per_class=100, yeast_epochs=5, ci_epochs=5
    ),
    "tiny": Sizes(
        seeds=2,
        lt_epochs=1,
        lt_n_max=40,
        lt_test_per_class=5,
        yeast_epochs=1,
        yeast_limit=200,
        hidden=(0.5,),
        agg_methods=("sum", "PCGrad/representation", "UPGrad/exact"),
        fashion=False,
        ci_epochs=1,
        ci_memory=2,
    ),
}


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks and a 64-unit layer (``trunk``), a Linear ``head`` (row c = class c).

    Example:
        >>> SmallCNN(28, 10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, side: int, num_classes: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * (side // 4) ** 2, 64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.trunk(x))
        return out


@dataclass
class Record:
    """One method on one experiment: every metric's value per seed."""

    experiment: str
    method: str
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def add(self, values: dict[str, float]) -> None:
        """Append one seed's metric values."""
        for k, v in values.items():
            self.metrics.setdefault(k, []).append(v)

    def mean(self, metric: str) -> float:
        """The mean over seeds (ignoring NaN; NaN when every value is NaN)."""
        vals = [v for v in self.metrics.get(metric, []) if not math.isnan(v)]
        return statistics.fmean(vals) if vals else math.nan

    def std(self, metric: str) -> float:
        """The sample standard deviation over seeds (0 for one seed)."""
        vals = [v for v in self.metrics.get(metric, []) if not math.isnan(v)]
        return statistics.stdev(vals) if len(vals) > 1 else 0.0

    def summary(self) -> dict[str, Any]:
        """Means, stds and per-seed values (for JSON)."""
        out: dict[str, Any] = {"experiment": self.experiment, "method": self.method}
        for k, v in self.metrics.items():
            out[k] = {"mean": _nan_none(self.mean(k)), "std": _nan_none(self.std(k))}
            out[k]["values"] = [_nan_none(x) for x in v]
        return out


@dataclass
class OutcomesResult:
    """Everything measured, the data that ran, and the files written."""

    records: list[Record]
    out: Path
    lt_source: str
    size: str
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    lt_counts: dict[str, list[int]] = field(default_factory=dict)
    per_class: dict[str, list[float]] = field(default_factory=dict)
    per_class_std: dict[str, list[float]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)

    def find(self, experiment: str, method: str) -> Record | None:
        """The record of ``method`` on ``experiment``, if it ran."""
        for r in self.records:
            if r.experiment == experiment and r.method == method:
                return r
        return None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "size": self.size,
            "lt_source": self.lt_source,
            "seconds": self.seconds,
            "records": [r.summary() for r in self.records],
            "lt_train_counts": self.lt_counts,
            "goals": goals(self),
            "files": self.files,
            "machine": machine(),
        }


def _nan_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def machine() -> dict[str, Any]:
    """Where the numbers come from."""
    import os

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "labelgrad": lg.__version__,
    }


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


# --- the benchmark ----------------------------------------------------------------------------


def run_outcomes(
    *,
    size: str = "full",
    out: str | Path = "labelgrad-outcomes",
    device: str = "cpu",
    quiet: bool = False,
    echo: Callable[[str], None] | None = print,
    command: str = "labelgrad bench --outcomes",
) -> OutcomesResult:
    """Run the three experiments, write the CSV, JSON, plots and results.md; return the results.

    Args:
        size: ``"full"``, ``"quick"`` (minutes on 2 CPU cores) or ``"tiny"`` (a smoke test).
        out: the output folder (created; checked writable before any training).
        device: where to train.
        quiet: no progress bar.
        echo: where the tables go (None: nowhere).
        command: the command line recorded in results.md.

    Raises:
        ValueError: an unknown size.
        PermissionError: ``out`` cannot be written.
    """
    sizes, dev, folder = prepare_run(SIZES, size, device, out)
    with small_model_threads(dev):
        result = _run(sizes, size, dev, folder, quiet, echo)
        write_outputs(result, command)
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


# --- reporting --------------------------------------------------------------------------------


def _cell(r: Record | None, metric: str, scale: float = 100.0, digits: int = 1) -> str:
    if r is None or metric not in r.metrics:
        return "—"
    m = r.mean(metric)
    if math.isnan(m):
        return "—"
    return f"{scale * m:.{digits}f} ± {scale * r.std(metric):.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _experiments(result: OutcomesResult, prefix: str) -> list[str]:
    seen: list[str] = []
    for r in result.records:
        if r.experiment.startswith(prefix) and r.experiment not in seen:
            seen.append(r.experiment)
    return seen


def markdown_tables(result: OutcomesResult) -> str:
    """The three result tables as Markdown (mean ± std over seeds, in %; step time in ms)."""
    parts = []
    lt_header = ["method", "balanced acc", "many-shot", "medium-shot", "few-shot"]
    for exp in _experiments(result, result.lt_source):
        rows = []
        for m in LT_METHODS:
            r = result.find(exp, m)
            rows.append(
                [m] + [_cell(r, k) for k in ("balanced_acc", "many_acc", "medium_acc", "few_acc")]
            )
        parts.append(f"**{exp}** (accuracy %, balanced test set)\n\n" + _md_table(lt_header, rows))
    partial_header = ["hidden", "method", "mAP", "macro-F1", "micro-F1"]
    rows = []
    for exp in _experiments(result, "Yeast, "):
        if not exp.endswith("hidden"):
            continue
        for m in PARTIAL_METHODS:
            r = result.find(exp, m)
            rows.append(
                [exp.split(", ")[1].split()[0], m]
                + [_cell(r, k) for k in ("map", "macro_f1", "micro_f1")]
            )
    if rows:
        parts.append("**Yeast, partial labels** (%)\n\n" + _md_table(partial_header, rows))
    agg_header = ["method/engine", "macro-F1", "worst-label AP", "mAP", "step ms (median)"]
    rows = []
    for r in result.records:
        if r.experiment == "Yeast, label aggregation":
            step = statistics.median(r.metrics["step_ms"])
            rows.append(
                [r.method]
                + [_cell(r, k) for k in ("macro_f1", "worst_ap", "map")]
                + [f"{step:.2f}"]
            )
    if rows:
        parts.append("**Yeast, conflicting labels** (%)\n\n" + _md_table(agg_header, rows))
    rows = [
        [m] + [_cell(result.find(CI_EXPERIMENT, m), k) for k in CI_METRICS]
        for m in INCREMENTAL_METHODS
        if result.find(CI_EXPERIMENT, m) is not None
    ]
    if rows:
        header = ["method", "average accuracy", "forgetting", "learning accuracy"]
        parts.append(f"**{CI_EXPERIMENT}** (%, after the last task)\n\n" + _md_table(header, rows))
    return "\n\n".join(parts)


def goals(result: OutcomesResult) -> dict[str, Any]:
    """The acceptance goals, the measured differences and whether they were met."""
    out: dict[str, Any] = {}
    exp = f"{result.lt_source} IF=100"
    plain = result.find(exp, "plain_ce")
    if plain is not None:
        best = max(
            (r for m in LABELGRAD_LT if (r := result.find(exp, m)) is not None),
            key=lambda r: r.mean("balanced_acc"),
        )
        gain = 100 * (best.mean("balanced_acc") - plain.mean("balanced_acc"))
        out["long_tail"] = {
            "goal": f"best labelgrad recipe >= +5 balanced-accuracy points over plain CE on {exp}",
            "best_method": best.method,
            "gain_points": gain,
            "met": gain >= 5.0,
        }
        reference = result.find(exp, "logit_adjusted")
        if reference is not None:
            gap = 100 * (best.mean("balanced_acc") - reference.mean("balanced_acc"))
            out["long_tail_reference"] = {
                "goal": f"best labelgrad recipe >= the logit-adjusted loss on {exp}",
                "best_method": best.method,
                "gain_points": gap,
                "met": gap >= 0.0,
            }
    exp = "Yeast, 50% hidden"
    unk = result.find(exp, PARTIAL_METHODS[0])
    ours = [r for m in PARTIAL_METHODS[1:] if (r := result.find(exp, m)) is not None]
    if unk is not None and ours:
        best = max(ours, key=lambda r: r.mean("map"))
        gain = 100 * (best.mean("map") - unk.mean("map"))
        out["partial"] = {
            "goal": "best recipe >= +3 mAP points over unknown-as-negative, Yeast, 50% hidden",
            "best_method": best.method,
            "gain_points": gain,
            "met": gain >= 3.0,
        }
    out.update(_incremental_goal(result))
    return out


def _incremental_goal(result: OutcomesResult) -> dict[str, Any]:
    plain = result.find(CI_EXPERIMENT, "fine_tuning")
    ours = [r for m in INCREMENTAL_METHODS[1:] if (r := result.find(CI_EXPERIMENT, m)) is not None]
    if plain is None or not ours:
        return {}
    best = min(ours, key=lambda r: r.mean("forgetting"))
    ratio = best.mean("forgetting") / max(plain.mean("forgetting"), 1e-12)
    return {
        "incremental": {
            "goal": "forgetting at most half that of fine-tuning (class-incremental)",
            "best_method": best.method,
            "forgetting_ratio": ratio,
            "met": ratio <= 0.5,
        }
    }


def _csv(result: OutcomesResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["experiment", "method", "metric", "mean", "std", "seeds", "values"])
    for r in result.records:
        for k, v in r.metrics.items():
            w.writerow(
                [
                    r.experiment,
                    r.method,
                    k,
                    f"{r.mean(k):.6g}",
                    f"{r.std(k):.6g}",
                    len(v),
                    ";".join(f"{x:.6g}" for x in v),
                ]
            )
    return buf.getvalue()


_WIDE = 12.0  # inches: 1200 px at the report's 100 dpi


def _method_colors(methods: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """One categorical colour per method, the same in every figure (tab20 beyond 10)."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _plot_lt_bars(result: OutcomesResult, path: Path) -> Path:
    """Balanced accuracy per method (mean ± std over seeds), one panel per imbalance factor."""
    plt = pyplot()
    exps = _experiments(result, result.lt_source)
    fig, axes = plt.subplots(1, len(exps), figsize=(_WIDE, 5.0), squeeze=False, sharey=True)
    colors = _method_colors(LT_METHODS)
    for ax, exp in zip(axes[0], exps):
        for i, m in enumerate(LT_METHODS):
            r = result.find(exp, m)
            if r is None:
                continue
            ax.bar(
                i,
                100 * r.mean("balanced_acc"),
                yerr=100 * r.std("balanced_acc"),
                color=colors[m],
                capsize=4,
                label=m,
                hatch="//" if m == "logit_adjusted" else None,
            )
        ax.set_xticks([])
        ax.set_xlabel("method (colour; hatched: the outside reference)")
        ax.set_title(exp)
        ax.grid(axis="x", visible=False)
    means = [
        100 * r.mean("balanced_acc")
        for e in exps
        for m in LT_METHODS
        if (r := result.find(e, m)) is not None
    ]
    if means:
        axes[0][0].set_ylim(max(0.0, min(means) - 8), min(100.0, max(means) + 4))
    axes[0][0].set_ylabel("balanced accuracy % (mean ± std)")
    _legend_outside(axes[0][-1], title="method")
    return save_figure(fig, path)


def _plot_partial(result: OutcomesResult, path: Path) -> Path:
    """Test mAP against the share of hidden labels, one line per method (mean ± std)."""
    plt = pyplot()
    exps = [e for e in _experiments(result, "Yeast, ") if e.endswith("hidden")]
    fracs = [float(e.split(", ")[1].split("%")[0]) for e in exps]
    fig, ax = plt.subplots(figsize=(_WIDE, 5.0))
    colors = _method_colors(PARTIAL_METHODS)
    for j, m in enumerate(PARTIAL_METHODS):
        recs = [result.find(e, m) for e in exps]
        offset = (j - (len(PARTIAL_METHODS) - 1) / 2) * 0.6  # keep the error bars apart
        ax.errorbar(
            [f + offset for f in fracs],
            [100 * r.mean("map") if r else math.nan for r in recs],
            yerr=[100 * r.std("map") if r else 0.0 for r in recs],
            marker="o",
            capsize=4,
            color=colors[m],
            label=m,
        )
    ax.set_xticks(fracs, [f"{f:g}" for f in fracs])
    ax.set(
        xlabel="training labels hidden % (points offset slightly per method)",
        ylabel="test mAP % (mean ± std)",
        title="Yeast, partial labels",
    )
    _legend_outside(ax, title="method")
    return save_figure(fig, path)


def _plot_aggregation(result: OutcomesResult, path: Path) -> Path:
    """Macro-F1 (mean ± std) against the median step time, one point per aggregation method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(_WIDE, 5.0))
    recs = [r for r in result.records if r.experiment == "Yeast, label aggregation"]
    colors = _method_colors([r.method for r in recs])
    for r in recs:
        step = statistics.median(r.metrics["step_ms"])
        ax.errorbar(
            [step],
            [100 * r.mean("macro_f1")],
            yerr=[100 * r.std("macro_f1")],
            marker="o",
            markersize=8,
            capsize=4,
            color=colors[r.method],
            label=r.method,
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="median step time, ms (log scale)",
        ylabel="macro-F1 % (mean ± std)",
        title="Yeast: label aggregation",
    )
    _legend_outside(ax, title="method/engine")
    return save_figure(fig, path)


def _plot_incremental(result: OutcomesResult, path: Path) -> Path:
    """Average accuracy and forgetting after the last task, one bar per method (mean ± std)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(_WIDE, 5.0))
    colors = _method_colors(INCREMENTAL_METHODS)
    for ax, metric, label in zip(
        axes,
        ("average_acc", "forgetting"),
        ("average accuracy %", "forgetting % (lower is better)"),
    ):
        for i, m in enumerate(INCREMENTAL_METHODS):
            r = result.find(CI_EXPERIMENT, m)
            if r is None:
                continue
            ax.bar(
                i,
                100 * r.mean(metric),
                yerr=100 * r.std(metric),
                color=colors[m],
                capsize=4,
                label=m,
            )
        ax.set_xticks([])
        ax.set_xlabel("method (colour)")
        ax.set_ylabel(f"{label} (mean ± std)")
        # Forgetting can be negative (a task learnt only after its own training).
        lowest = min([0.0] + [bar.get_height() for bar in ax.patches])
        ax.set_ylim(lowest - 5 if lowest < 0 else 0, 100)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.grid(axis="x", visible=False)
    fig.suptitle(f"{CI_EXPERIMENT}, after the last task")
    _legend_outside(axes[-1], title="method")
    return save_figure(fig, path)


PER_CLASS_METHODS = (
    "plain_ce",
    "deferred_reweighting",
    "row_rules",
    "logit_adjust",
    "seesaw",
    "logit_adjust+row_rules",
    "logit_adjusted",
)
"""The long-tail methods of the per-class figure (all ten would make unreadably thin bars)."""


def _results_md(result: OutcomesResult, command: str, images: list[str]) -> str:
    sizes = SIZES[result.size]
    mach = machine()
    lines = [
        "# labelgrad outcomes",
        "",
        f"Produced by `{command}` (size `{result.size}`) in {result.seconds / 60:.1f} min on "
        f"{mach['platform']}, {mach['cpu_count']} CPU cores, torch {mach['torch']}, "
        f"1 torch thread. Mean ± std over {sizes.seeds} seeds (0..{sizes.seeds - 1}); each seed "
        "draws its own data cut (long-tail subset, Yeast split, hidden labels) and model "
        "initialisation, the same for every method.",
        "",
        "## Goals",
        "",
        *_md_goals(goals(result)),
        *_md_recipe(result, sizes),
        "",
        "## Results",
        "",
        markdown_tables(result),
        "",
    ]
    for img in images:
        lines += [f"![{img}]({img})", ""]
    return "\n".join(lines)


def _met(goal: dict[str, Any]) -> str:
    return f"**{'met' if goal['met'] else 'not met'}**"


def _md_goals(g: dict[str, Any]) -> list[str]:
    """One line per goal that was measured: the best method and whether it met the goal."""
    lines = []
    if "long_tail" in g:
        lines.append(_best_line(g["long_tail"]))
    if "long_tail_reference" in g:
        ref = g["long_tail_reference"]
        same = (
            " (`logit_adjust` is the reference loss's gradient as a policy: level by "
            "construction, the gap is float rounding)"
            if ref["best_method"] == "logit_adjust"
            else ""
        )
        lines.append(
            f"- {ref['goal']}: `{ref['best_method']}` at {ref['gain_points']:+.1f} points "
            f"— {_met(ref)}{same}."
        )
    if "partial" in g:
        lines.append(_best_line(g["partial"]))
    if "incremental" in g:
        ci = g["incremental"]
        lines.append(
            f"- {ci['goal']}: best is `{ci['best_method']}` at {ci['forgetting_ratio']:.2f} × "
            f"fine-tuning — {_met(ci)}."
        )
    return lines


def _best_line(goal: dict[str, Any]) -> str:
    return (
        f"- {goal['goal']}: best is `{goal['best_method']}` at {goal['gain_points']:+.1f} "
        f"points — {_met(goal)}."
    )


def _md_recipe(result: OutcomesResult, sizes: Sizes) -> list[str]:
    """The recipe section: data, models and the settings of every method."""
    counts = ", ".join(f"{k}: {v}" for k, v in result.lt_counts.items())
    return [
        "",
        "## Recipe (identical for every method of an experiment; nothing tuned per method)",
        "",
        f"- Long tail: **{result.lt_source}** (CIFAR-LT protocol, n_max = {sizes.lt_n_max}; "
        f"training images per class {counts}); test set: "
        + (
            "the official balanced test set (1,000 per class)"
            if sizes.lt_test_per_class is None
            else f"{sizes.lt_test_per_class} per class of the official test set"
        )
        + f". SmallCNN (2 conv blocks, 64-unit layer, Linear head), Adam lr {sizes.lt_lr}, "
        f"batch {sizes.lt_batch}, {sizes.lt_epochs} epochs. Many-shot > {MANY_SHOT} training "
        f"images, few-shot < {FEW_SHOT}, medium in between (— where a group is empty).",
        f"- class_weights: effective-number weights, beta = {BETA}; deferred_reweighting: the "
        f"same weights from step {DRW_FRACTION:.2f} × total (`lg.schedule`); eqlv2: "
        "`lg.eqlv2` defaults with sigmoid BCE (compare with plain_sigmoid); row_rules: "
        f"`lg.RowRules`, head row c steps with lr × (n_max/n_c)^{TAIL_LR_POWER}, skip_absent; "
        f"logit_adjusted: cross-entropy of logits + {LA_TAU} × log prior (Menon et al. 2021), "
        "the literature's reference, not a labelgrad recipe.",
        f"- Yeast: MLP 103-128-14, Adam lr {sizes.yeast_lr}, batch {sizes.yeast_batch}, "
        f"{sizes.yeast_epochs} epochs, 70/30 train/test split; F1 at threshold 0.5; mAP over "
        "labels with a positive test sample. Hidden labels: `hide_labels` marks entries unknown; "
        "unknown_as_negative trains on them as 0, mask_unknown zeroes their gradient, "
        f"+class_weights adds effective-number weights (beta {BETA}) of the known positives.",
        "- Aggregation: the per-label BCE losses (`lg.per_label_losses`) aggregated on the MLP "
        "trunk by `lg.aggregate_backward` (engine representation: closed-form Gramian at the "
        "features; exact: per-label gradients of the trunk); sum = the plain mean BCE.",
        "- Surrogate policies: `lg.logit_adjust(train counts, tau = "
        f"{LA_TAU})`, `lg.seesaw(C)` under plain cross-entropy; `lg.asymmetric_focus()` "
        "(gamma_pos 0, gamma_neg 4, clip 0.05) under the Yeast BCE, unknowns as negatives "
        "unless chained after `mask_unknown`. The one combination, chosen before any run from "
        "the literature and not swept: `logit_adjust+row_rules` = the `logit_adjust` gradient "
        "with the `row_rules` optimizer. Logit adjustment fixes the *target* (its minimiser is "
        "the balanced-error optimum, Menon et al. 2021), so adding re-weighting such as "
        "deferred re-weighting would count the prior twice; the tail-row step scale acts on "
        "the *optimisation* instead (rare rows get few, small updates), which the loss leaves "
        "as it is.",
        f"- Class-incremental: digits (balanced cut), 5 tasks of 2 classes, MLP 64-64-10, SGD "
        f"lr 0.1, batch 32, {sizes.ci_epochs} epochs per task, replay memory of "
        f"{sizes.ci_memory} training images per learnt class; A-GEM projects each batch "
        "gradient against the loss on the whole memory (`lg.project_replay`); frozen rows: "
        "`lg.RowRules(frozen=old classes)`; labels_trick, chosen from the literature before the "
        "run: the labels trick (Zeno et al. 2018) as ER-ACE's asymmetric cross-entropy (Caccia et "
        "al. 2022; SS-IL, Ahn et al. 2021): the task's batch trains a softmax over the classes "
        "present in it (a surrogate-gradient `lg.Policy`), the memory plain cross-entropy over "
        "all classes, summed; agem+labels_trick: A-GEM with that batch loss. The memory takes a "
        "task's images only after the task. Forgetting as in Chaudhry et al. 2018: the mean "
        "over tasks 1-4 of (the best accuracy on the task after any earlier task - the accuracy "
        "after the last task); average accuracy: the mean over the 5 tasks' test sets after "
        "the last task (no task identity at test time); learning accuracy (Riemer et al. 2019): "
        "the mean over the tasks of the accuracy on a task right after training it.",
    ]


def write_outputs(result: OutcomesResult, command: str) -> list[str]:
    """Write outcomes.csv, outcomes.json, the plots and results.md into ``result.out``."""
    folder = result.out
    images = []
    _plot_lt_bars(result, folder / "lt_balanced_accuracy.png")
    images.append("lt_balanced_accuracy.png")
    key = "IF=100"
    if key in result.lt_counts:
        shown = [m for m in PER_CLASS_METHODS if f"{key}/{m}" in result.per_class]
        plot_per_class_accuracy(
            {m: result.per_class[f"{key}/{m}"] for m in shown},
            result.class_names,
            folder / "lt_per_class_if100.png",
            counts=result.lt_counts[key],
            title=f"{result.lt_source} IF=100: per-class test accuracy (mean ± std over seeds)",
            errors={
                m: result.per_class_std[f"{key}/{m}"]
                for m in shown
                if f"{key}/{m}" in result.per_class_std
            },
        )
        images.append("lt_per_class_if100.png")
    _plot_partial(result, folder / "yeast_partial_map.png")
    images.append("yeast_partial_map.png")
    _plot_aggregation(result, folder / "yeast_aggregation.png")
    images.append("yeast_aggregation.png")
    if result.find(CI_EXPERIMENT, INCREMENTAL_METHODS[0]) is not None:
        _plot_incremental(result, folder / "incremental.png")
        images.append("incremental.png")
    result.files = [*images, "outcomes.csv", "outcomes.json", "results.md"]
    atomic_write_text(folder / "outcomes.csv", _csv(result))
    atomic_write_text(folder / "outcomes.json", json.dumps(result.as_dict(), indent=1) + "\n")
    atomic_write_text(folder / "results.md", _results_md(result, command, images))
    return result.files
