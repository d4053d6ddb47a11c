"""The outputs of the outcomes benchmark: its tables, its goals and whether they were met,
``outcomes.csv``, ``outcomes.json``, the figures and ``results.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from typing import Any

from labelgrad.app.bench.incremental import INCREMENTAL_METHODS
from labelgrad.app.bench.outcomes_plots import (
    PER_CLASS_METHODS,
    plot_aggregation,
    plot_incremental,
    plot_lt_bars,
    plot_partial,
)
from labelgrad.app.bench.outcomes_setup import (
    CI_EXPERIMENT,
    CI_METRICS,
    LT_METHODS,
    PARTIAL_METHODS,
    SIZES,
    OutcomesResult,
    Record,
    Sizes,
    experiments,
    goals,
    machine,
)
from labelgrad.app.metrics import FEW_SHOT, MANY_SHOT
from labelgrad.app.plots import plot_per_class_accuracy
from labelgrad.app.recipes import BETA, DRW_FRACTION, LA_TAU, TAIL_LR_POWER
from labelgrad.report import atomic_write_text

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


def markdown_tables(result: OutcomesResult) -> str:
    """The three result tables as Markdown (mean ± std over seeds, in %; step time in ms)."""
    parts = []
    lt_header = ["method", "balanced acc", "many-shot", "medium-shot", "few-shot"]
    for exp in experiments(result, result.lt_source):
        rows = []
        for m in LT_METHODS:
            r = result.find(exp, m)
            rows.append(
                [m] + [_cell(r, k) for k in ("balanced_acc", "many_acc", "medium_acc", "few_acc")]
            )
        parts.append(f"**{exp}** (accuracy %, balanced test set)\n\n" + _md_table(lt_header, rows))
    partial_header = ["hidden", "method", "mAP", "macro-F1", "micro-F1"]
    rows = []
    for exp in experiments(result, "Yeast, "):
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
    plot_lt_bars(result, folder / "lt_balanced_accuracy.png")
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
    plot_partial(result, folder / "yeast_partial_map.png")
    images.append("yeast_partial_map.png")
    plot_aggregation(result, folder / "yeast_aggregation.png")
    images.append("yeast_aggregation.png")
    if result.find(CI_EXPERIMENT, INCREMENTAL_METHODS[0]) is not None:
        plot_incremental(result, folder / "incremental.png")
        images.append("incremental.png")
    result.files = [*images, "outcomes.csv", "outcomes.json", "results.md"]
    atomic_write_text(folder / "outcomes.csv", _csv(result))
    atomic_write_text(folder / "outcomes.json", json.dumps(result.as_dict(), indent=1) + "\n")
    atomic_write_text(folder / "results.md", _results_md(result, command, images))
    return result.files
