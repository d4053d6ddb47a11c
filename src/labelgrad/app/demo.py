"""``labelgrad demo``: the three levels on bundled real data, with a table and an HTML report.

Experiments (each method trained from the same seeds; mean ± std over seeds):

(a) digits-LT (scikit-learn's digits cut long-tailed, IF = 10 and 100; balanced test set):
    the long-tail recipes of :mod:`labelgrad.app.recipes` (plain cross-entropy; ``class_weights``
    with effective-number weights; plain sigmoid and ``eqlv2``; ``RowRules`` giving the head rows
    of rare classes a larger step). Metrics (:mod:`labelgrad.app.metrics`): balanced accuracy,
    few-shot accuracy (classes with fewer than 20 training images), median step time.
(b) Yeast with half the training labels hidden: unknowns treated as negatives vs ``mask_unknown``.
(c) Yeast: the summed label gradients vs PCGrad and UPGrad on the shared trunk
    (``lg.aggregate_backward``). Metrics for Yeast: macro mAP and macro F1 at threshold 0.5.

The rows and their tables are :mod:`labelgrad.app.demo_tables`, the training runs
:mod:`labelgrad.app.demo_runs`; this module runs the experiments and writes the report.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import labelgrad as lg
from labelgrad.app.datasets import Dataset, digits_lt, hide_labels, yeast
from labelgrad.app.demo_runs import (
    SIZES,
    MethodRun,
    Sizes,
    digits_lt_run,
    digits_setup,
    set_timings,
    yeast_run,
    yeast_setup,
)
from labelgrad.app.demo_tables import (
    AGG_METHODS,
    DIGITS_METHODS,
    IMBALANCES,
    PARTIAL_METHODS,
    Row,
    experiment_tables,
    nan_std,
    plain_table,
    takeaways,
)
from labelgrad.app.html import Section, write_report
from labelgrad.app.metrics import FEW_SHOT
from labelgrad.app.outputs import DEFAULT_OUT, record_output
from labelgrad.app.plots import plot_conflicts, plot_grad_norm_history, plot_per_class_accuracy
from labelgrad.app.recipes import BETA, TAIL_LR_POWER
from labelgrad.app.training import MLP, prepare_run, progress_bar, small_model_threads
from labelgrad.report import atomic_write_text, label_gramian, save_monitor

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """Everything the demo measured, and where it wrote its files."""

    rows: list[Row]
    out: Path
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "rows": [r.summary() for r in self.rows],
            "out": str(self.out),
            "files": self.files,
            "seconds": self.seconds,
        }


DEMO_FILES = (
    "results.json",
    "report.html",
    "per_class_accuracy.png",
    "grad_norm_*.png",
    "label_conflicts.png",
    "monitor_digits_if100_*",
)
"""The files (``fnmatch`` patterns) the demo may write into its output folder."""


# --- the demo ---------------------------------------------------------------------------------


def run_demo(
    *,
    seed: int = 0,
    device: str = "cpu",
    out: str | Path = DEFAULT_OUT["demo"],
    quiet: bool = False,
    size: str = "full",
    echo: Callable[[str], None] | None = print,
    force: bool = False,
) -> DemoResult:
    """Run the demo experiments, print the table, write the report; return the results.

    Args:
        seed: the first seed; the runs use ``seed, seed + 1, ...``.
        device: where to train ("cpu", "cuda", ...).
        out: the output folder (created; must be writable).
        quiet: no progress bar.
        size: ``"full"`` (``make demo``) or ``"tiny"`` (a seconds-long smoke run for tests).
        echo: where the table goes (None: nowhere).
        force: replace the files of another run in ``out``.

    Raises:
        OutputError: ``out`` is empty, a file, or holds another run (without ``force``).
        PermissionError: ``out`` cannot be written (checked before any training).
    """
    t_start = time.perf_counter()
    sizes, dev, folder = prepare_run(
        SIZES,
        size,
        device,
        out,
        command="demo",
        identity=f"seed={seed}",
        files=DEMO_FILES,
        force=force,
    )
    with small_model_threads(dev):
        result = _run(seed, dev, folder, quiet, sizes, echo, t_start)
    record_output(folder, result.files)
    return result


@dataclass
class _Collected:
    """What the experiments leave for the figures and the report."""

    rows: list[Row] = field(default_factory=list)
    per_class_if100: dict[str, list[list[float]]] = field(default_factory=dict)
    histories: dict[str, list[list[float]]] = field(default_factory=dict)
    monitors: dict[str, lg.GradMonitor] = field(default_factory=dict)
    digits_if100: Dataset | None = None
    yeast: Dataset | None = None
    conflicts: Tensor | None = None


class _Runner:
    """Runs each (experiment, method) once per seed, adds its table row, advances the bar."""

    def __init__(self, seeds: list[int], bar: Any, collected: _Collected) -> None:
        self.seeds, self.bar, self.collected = seeds, bar, collected

    def row(
        self, experiment: str, method: str, run_one: Callable[[int], MethodRun]
    ) -> list[MethodRun]:
        """One table row: ``method`` run once per seed (runs[0] is the first seed's)."""
        row = Row(experiment, method, {}, [])
        runs = []
        for s in self.seeds:
            self.bar.set_postfix_str(f"{experiment}: {method} seed={s}")
            run = run_one(s)
            for key, v in run.metrics.items():
                row.metrics.setdefault(key, []).append(v)
            row.step_ms.append(run.step_ms)
            runs.append(run)
            self.bar.update()
        self.collected.rows.append(row)
        return runs


def _digits_experiments(r: _Runner, seed: int, sizes: Sizes, dev: torch.device) -> None:
    """digits-LT at each imbalance factor: every long-tail recipe, then their step times."""
    got = r.collected
    for imb in IMBALANCES:
        for method in DIGITS_METHODS:
            runs = r.row(
                f"digits-LT IF={imb:g}",
                method,
                partial(digits_lt_run, imbalance=imb, method=method, sizes=sizes, device=dev),
            )
            if imb == 100.0:
                got.per_class_if100[method] = [run.per_class for run in runs]
                got.histories[method] = runs[0].history
                got.monitors[method] = runs[0].monitor
        ds = digits_lt(imbalance=imb, seed=seed)
        if imb == 100.0:
            got.digits_if100 = ds
        steps = {m: digits_setup(ds, m, seed, sizes, dev)[2] for m in DIGITS_METHODS}
        set_timings(got.rows[-len(DIGITS_METHODS) :], steps, ds, ds.y_train, sizes, dev)


def _yeast_experiments(r: _Runner, seed: int, sizes: Sizes, dev: torch.device) -> None:
    """Yeast with half the labels hidden, then label aggregation; the label conflicts."""
    base = yeast(seed=seed).head(sizes.yeast_limit)
    r.collected.yeast = base
    hidden = hide_labels(base.y_train, 0.5, seed=seed)
    for experiment, methods, y_train in (
        ("Yeast, 50% labels hidden", PARTIAL_METHODS, hidden),
        ("Yeast, label aggregation", AGG_METHODS, base.y_train),
    ):
        for method in methods:
            runs = r.row(
                experiment,
                method,
                partial(yeast_run, base, method, sizes=sizes, device=dev, y_train=y_train),
            )
            if method == "sum":
                r.collected.conflicts = _label_conflicts(runs[0].model, base, dev)
        steps = {m: yeast_setup(base, m, seed, dev, y_train)[2] for m in methods}
        set_timings(r.collected.rows[-len(methods) :], steps, base, y_train, sizes, dev)


def _run(
    seed: int,
    dev: torch.device,
    folder: Path,
    quiet: bool,
    sizes: Sizes,
    echo: Callable[[str], None] | None,
    t_start: float,
) -> DemoResult:
    seeds = [seed + i for i in range(sizes.seeds)]
    total = len(seeds) * (
        len(IMBALANCES) * len(DIGITS_METHODS) + len(PARTIAL_METHODS) + len(AGG_METHODS)
    )
    bar = progress_bar(total, quiet=quiet, desc="labelgrad demo", unit="run", leave=False)
    got = _Collected()
    runner = _Runner(seeds, bar, got)
    try:
        _digits_experiments(runner, seed, sizes, dev)
        _yeast_experiments(runner, seed, sizes, dev)
    finally:
        bar.close()
    result = DemoResult(got.rows, folder)
    # Data first, then figures, the report last (each written atomically).
    atomic_write_text(folder / "results.json", json.dumps(result.as_dict(), indent=1) + "\n")
    result.files = _write_figures(folder, got, len(seeds))
    result.files.append("results.json")
    _write_demo_report(folder / "report.html", result, got.conflicts, len(seeds), str(dev))
    result.files.append("report.html")
    result.seconds = time.perf_counter() - t_start
    atomic_write_text(folder / "results.json", json.dumps(result.as_dict(), indent=1) + "\n")
    if echo is not None:
        for exp, header, table in experiment_tables(got.rows):
            echo(f"\n{exp}\n" + plain_table(header, table))
        echo("")
        for line in takeaways(got.rows):
            echo(f"- {line}")
        echo(f"report: {folder / 'report.html'}  ({result.seconds:.0f} s)")
    return result


def _write_figures(folder: Path, got: _Collected, num_seeds: int) -> list[str]:
    """The demo's PNG figures and GradMonitor exports; returns the file names written."""
    assert got.digits_if100 is not None
    assert got.yeast is not None
    files: list[str] = []
    names = list(got.digits_if100.class_names)
    mean_acc = {
        m: [statistics.fmean(col) for col in zip(*runs)] for m, runs in got.per_class_if100.items()
    }
    std_acc = {m: [nan_std(list(c)) for c in zip(*runs)] for m, runs in got.per_class_if100.items()}
    plot_per_class_accuracy(
        mean_acc,
        names,
        folder / "per_class_accuracy.png",
        counts=got.digits_if100.train_counts().tolist(),
        title=f"digits-LT IF=100: per-class test accuracy (mean ± std over {num_seeds} seeds)",
        errors=std_acc,
    )
    files.append("per_class_accuracy.png")
    ylim = _shared_range([got.histories[m] for m in ("plain_ce", "eqlv2") if m in got.histories])
    for method in ("plain_ce", "eqlv2"):
        if method in got.histories:
            plot_grad_norm_history(
                got.histories[method],
                names,
                folder / f"grad_norm_{method}.png",
                title=f"digits-LT IF=100, {method}: per-class ‖dL/dlogit‖ per step (GradMonitor)",
                ylim=ylim,
            )
            files.append(f"grad_norm_{method}.png")
    if got.conflicts is not None:
        plot_conflicts(
            got.conflicts.tolist(),
            list(got.yeast.class_names),
            folder / "label_conflicts.png",
            title="Yeast: cosine of label gradients on the shared trunk",
        )
        files.append("label_conflicts.png")
    for method, mon in got.monitors.items():
        for suffix in ("csv", "history.csv", "json"):
            name = f"monitor_digits_if100_{method}.{suffix}"
            save_monitor(mon, folder / name, names)
            files.append(name)
    return files


def _shared_range(histories: list[list[list[float]]]) -> tuple[float, float] | None:
    """One log-scale y range for gradient-norm figures compared side by side."""
    values = sorted(v for h in histories for row in h for v in row if v > 0 and math.isfinite(v))
    if not values:
        return None
    # The 1st percentile: a few near-zero steps (a class absent from a batch) would otherwise
    # stretch the log axis over decades of empty space.
    return values[len(values) // 100] / 2, values[-1] * 1.5


def _label_conflicts(model: MLP, ds: Dataset, device: torch.device) -> Tensor:
    """Conflict matrix of the per-label losses' gradients on the trunk, on the training set."""
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    logits = model(x)
    losses = lg.per_label_losses(logits, y, loss="bce")
    gram = label_gramian(losses, model.trunk.parameters())
    return lg.conflicts(gram.detach()).cpu()


def _conflict_stats(conflicts: Tensor) -> str:
    k = conflicts.shape[0]
    off = conflicts[~torch.eye(k, dtype=torch.bool)]
    return (
        f"{int((off < 0).sum()) // 2} of {k * (k - 1) // 2} label pairs have conflicting "
        f"gradients (negative cosine); the most conflicting pair has cosine {float(off.min()):.2f}."
    )


def _write_demo_report(
    path: Path, result: DemoResult, conflicts: Tensor | None, num_seeds: int, device: str
) -> None:
    sections = [_intro_section(result, num_seeds, device)]
    for exp, header, table in experiment_tables(result.rows):
        sections.append(Section(exp, header=header, rows=[list(r) for r in table]))
    sections += _figure_sections(result, conflicts, num_seeds)
    write_report(
        path,
        "labelgrad demo",
        sections,
        footer=f"labelgrad {lg.__version__}, torch {torch.__version__}",
    )


def _intro_section(result: DemoResult, num_seeds: int, device: str) -> Section:
    """What the numbers mean, and the takeaways."""
    return Section(
        "What the results show",
        [
            f"Mean ± std over {num_seeds} seeds, in %. Balanced accuracy is the mean per-class "
            "accuracy on a balanced test set; few-shot accuracy the mean over the classes with "
            f"fewer than {FEW_SHOT} training images. Step time: the median of one training step "
            f"(forward + backward + optimizer) on {device}, the methods of an experiment timed in "
            "turn on one fixed batch, and the ratio to the experiment's first method. "
            f"class_weights: effective-number weights, beta = {BETA}; row_rules: head row c steps "
            f"with lr × (n_max/n_c)^{TAIL_LR_POWER}, rows of classes absent from a batch stay put.",
        ],
        bullets=takeaways(result.rows),
    )


def _figure_sections(result: DemoResult, conflicts: Tensor | None, num_seeds: int) -> list[Section]:
    """The per-class accuracy, gradient norm and label conflict figures."""
    sections = []
    sections.append(
        Section(
            "Per-class accuracy, digits-LT IF=100",
            images=["per_class_accuracy.png"],
            captions=[
                f"Mean test accuracy of each class over {num_seeds} seeds (error bars: std); "
                "under each class its training count. Class 0 has the most training images, "
                "class 9 the fewest."
            ],
        )
    )
    norm_imgs = [f for f in result.files if f.startswith("grad_norm_")]
    sections.append(
        Section(
            "Per-class gradient norm over training",
            images=norm_imgs,
            captions=[
                f"{f.removeprefix('grad_norm_').removesuffix('.png')}: the norm of each class's "
                "gradient at the logits per step (lg.monitor), 9-step average; same y range."
                for f in norm_imgs
            ],
        )
    )
    if conflicts is not None:
        sections.append(
            Section(
                "Label conflicts, Yeast",
                [_conflict_stats(conflicts)],
                images=["label_conflicts.png"],
                captions=[
                    "Cosine between the per-label loss gradients on the shared trunk (training "
                    "set, after training). Red: conflicting (negative), blue: aligned; the "
                    "diagonal (always 1) is greyed out."
                ],
            )
        )
    return sections
