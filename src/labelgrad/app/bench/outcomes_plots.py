"""The figures of the outcomes benchmark (long-tail bars, partial labels, aggregation,
class-incremental).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from labelgrad.app.bench.incremental import INCREMENTAL_METHODS
from labelgrad.app.bench.outcomes_lt import LT_PROTOCOL_METHODS
from labelgrad.app.bench.outcomes_setup import (
    CI_EXPERIMENT,
    PARTIAL_METHODS,
    OutcomesResult,
    experiments,
)
from labelgrad.app.plots import _legend_outside, pyplot, save_figure

_WIDE = 12.0  # inches: 1200 px at the report's 100 dpi


def _method_colors(methods: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """One categorical colour per method, the same in every figure (tab20 beyond 10)."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def plot_lt_bars(result: OutcomesResult, path: Path) -> Path:
    """Balanced accuracy per method (mean ± std over seeds), one panel per imbalance factor."""
    plt = pyplot()
    exps = experiments(result, result.lt_source)
    fig, axes = plt.subplots(1, len(exps), figsize=(_WIDE, 5.0), squeeze=False, sharey=True)
    colors = _method_colors(LT_PROTOCOL_METHODS)
    for ax, exp in zip(axes[0], exps):
        for i, m in enumerate(LT_PROTOCOL_METHODS):
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
        for m in LT_PROTOCOL_METHODS
        if (r := result.find(e, m)) is not None
    ]
    if means:
        axes[0][0].set_ylim(max(0.0, min(means) - 8), min(100.0, max(means) + 4))
    axes[0][0].set_ylabel("balanced accuracy % (mean ± std)")
    _legend_outside(axes[0][-1], title="method")
    return save_figure(fig, path)


def plot_partial(result: OutcomesResult, path: Path) -> Path:
    """Test mAP against the share of hidden labels, one line per method (mean ± std)."""
    plt = pyplot()
    exps = [e for e in experiments(result, "Yeast, ") if e.endswith("hidden")]
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


def plot_aggregation(result: OutcomesResult, path: Path) -> Path:
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


def plot_incremental(result: OutcomesResult, path: Path) -> Path:
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
            if r is None or math.isnan(r.mean(metric)):
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


PER_CLASS_METHODS = LT_PROTOCOL_METHODS
"""The long-tail methods of the per-class figure."""
