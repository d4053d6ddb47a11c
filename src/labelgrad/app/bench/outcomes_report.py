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
from labelgrad.app.bench.outcomes_lt import LT_PROTOCOL_METHODS
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
from labelgrad.app.recipes import BETA
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
    lt_header = [
        "method",
        "chosen on validation",
        "balanced acc",
        "many-shot",
        "medium-shot",
        "few-shot",
        "val balanced acc",
        "epochs: best / stopped",
    ]
    for exp in experiments(result, result.lt_source):
        rows = []
        key = exp.rsplit(" ", 1)[-1]
        for m in LT_PROTOCOL_METHODS:
            r = result.find(exp, m)
            if r is None:
                continue
            cfg = result.lt_configs.get(f"{key}/{m}", {})
            rows.append(
                [m, _config_text(cfg)]
                + [_cell(r, k) for k in ("balanced_acc", "many_acc", "medium_acc", "few_acc")]
                + [_cell(r, "val_balanced_acc"), _epochs(r)]
            )
        parts.append(
            f"**{exp}** (accuracy %, official balanced test set; mean ± std over "
            f"{_seeds(result, exp)} seeds)\n\n" + _md_table(lt_header, rows)
        )
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


def _config_text(cfg: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in cfg.items()) or "—"


def _epochs(r: Record) -> str:
    best, stop = r.metrics.get("best_epoch", []), r.metrics.get("epochs", [])
    if not best:
        return "—"
    return f"{statistics.fmean(best):.1f} / {statistics.fmean(stop):.1f}"


def _seeds(result: OutcomesResult, exp: str) -> int:
    return max(
        (len(v) for r in result.records if r.experiment == exp for v in r.metrics.values()),
        default=0,
    )


def _grid_lines(result: OutcomesResult) -> list[str]:
    """Every configuration tried on seed 0's validation split, per imbalance factor and method."""
    lines = []
    for name, grid in result.lt_grids.items():
        tried = "; ".join(
            _config_text({k: v for k, v in g.items() if k != "val_balanced_acc"})
            + f" → {100 * g['val_balanced_acc']:.1f}"
            for g in grid
        )
        lines.append(f"- {name}: {tried}")
    return lines


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
        "1 torch thread. Each seed draws its own data cut (long-tail subset, Yeast split, "
        "hidden labels) and model initialisation, the same for every method.",
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
    for key in ("long_tail_beyond_loss", "long_tail_beyond_loss_if10"):
        if key in g:
            b = g[key]
            miss = b["need_points"] - b["gain_points"]
            digits = 2 if abs(b["gain_points"]) < 0.05 or 0 < miss < 0.05 else 1
            by = f" (missed by {miss:.{digits}f} points)" if not b["met"] else ""
            lines.append(
                f"- {b['goal']}: best is `{b['best_method']}` at {b['gain_points']:+.{digits}f} "
                f"points — {_met(b)}{by}."
            )
    if "partial" in g:
        lines.append(_best_line(g["partial"]))
    if "incremental_standard" in g:
        ci = g["incremental_standard"]
        lines.append(
            f"- {ci['goal']}: closest is `{ci['best_method']}` at "
            f"{100 * ci['average_acc']:.1f} % / {100 * ci['forgetting']:.1f} % / "
            f"{100 * ci['learning_acc']:.1f} % — {_met(ci)} (joint training, the ceiling: "
            f"{100 * ci['joint_average_acc']:.1f} %)."
        )
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
    """The recipe section: data, protocol, models and the settings of every method."""
    counts = ", ".join(f"{k}: {v}" for k, v in result.lt_counts.items())
    test = (
        "the official balanced test set (1,000 per class)"
        if sizes.lt_test_per_class is None
        else f"{sizes.lt_test_per_class} per class of the official test set"
    )
    val = (
        f"{sizes.lt_val_per_class} images per class drawn from the official training images "
        "the long-tailed cut left out (balanced, as ImageNet-LT's validation set)"
        if result.lt_source == "Fashion-MNIST-LT"
        else "a fifth of each training class (none for classes under 5 images)"
    )
    knobs = (
        f"tau of the logit-adjusted loss {list(sizes.lt_taus)}; MaxNorm radius "
        f"{list(sizes.lt_radii)} × the stage-1 head's mean weight-row norm; tau-normalisation "
        f"power {list(sizes.lt_tau_norms)}"
    )
    return [
        "",
        "## Protocol (identical for every method of an experiment)",
        "",
        f"- Long tail: **{result.lt_source}** (CIFAR-LT protocol, n_max = {sizes.lt_n_max}; "
        f"training images per class {counts}); validation: {val}; test: {test}, read once per "
        f"reported run, never for a choice. SmallCNN (2 conv blocks, 64-unit layer, Linear "
        f"head), AdamW lr {sizes.lt_lr}, batch {sizes.lt_batch}. Many-shot > {MANY_SHOT} "
        f"training images, few-shot < {FEW_SHOT}, medium in between (— where a group is empty).",
        f"- Trained to a plateau: after every epoch the validation balanced accuracy is "
        f"measured; a run stops when it has not improved for {sizes.lt_patience} epochs (at "
        f"most {sizes.lt_max_epochs} epochs) and keeps the weights of its best validation epoch. "
        "The table gives the mean best and stopping epochs; a run that reached the cap while "
        "still improving is counted in `at_cap` (outcomes.csv).",
        f"- Tuning without peeking: each method's hyperparameters are chosen on seed 0's "
        f"validation split by the same coordinate search: the AdamW weight decays "
        f"{list(sizes.lt_weight_decays)} at the middle value of the method's own knob, then the "
        "knob's other values at the best weight decay (5 configurations; 3 for plain CE, which "
        f"has no knob). Knobs: {knobs}. The chosen configuration is then trained with seeds "
        f"0..{sizes.lt_seeds - 1}. The logit-adjusted reference is tuned the same way.",
        "- Methods: plain_ce; logit_adjusted: cross-entropy of logits + tau × log prior (Menon "
        "et al. 2021), the literature's reference, not a labelgrad recipe (`lg.logit_adjust` "
        "gives the same gradient as a policy); tau_norm: plain_ce's head with each weight row "
        "divided by its norm^power (Kang et al. 2020); weight_balancing (Alshammari et al. "
        "2022): stage 1 = plain_ce with the tuned weight decay, stage 2 = the head retrained on "
        "the frozen trunk's features with class-balanced cross-entropy (`lg.class_weights`, "
        f"effective-number weights, beta {BETA}), per-row weight decay and per-class MaxNorm "
        "(`lg.RowRules(weight_decay=..., max_norm=...)`), to its own validation plateau; "
        "weight_balancing+logit_adjust: the same stage 2 with the `lg.logit_adjust` gradient "
        "(tau = the reference's choice) instead of class weights. Stage 2 uses stage 1's "
        "weight decay.",
        f"- Yeast: MLP 103-128-14, Adam lr {sizes.yeast_lr}, batch {sizes.yeast_batch}, "
        f"{sizes.yeast_epochs} epochs, 70/30 train/test split, mean ± std over {sizes.seeds} "
        "seeds; F1 at threshold 0.5; mAP over "
        "labels with a positive test sample. Hidden labels: `hide_labels` marks entries unknown; "
        "unknown_as_negative trains on them as 0, mask_unknown zeroes their gradient, "
        f"+class_weights adds effective-number weights (beta {BETA}) of the known positives; "
        "`lg.asymmetric_focus()` (gamma_pos 0, gamma_neg 4, clip 0.05) under the Yeast BCE, "
        "unknowns as negatives unless chained after `mask_unknown`. Not tuned (fixed recipe).",
        "- Aggregation: the per-label BCE losses (`lg.per_label_losses`) aggregated on the MLP "
        "trunk by `lg.aggregate_backward` (engine representation: closed-form Gramian at the "
        "features; exact: per-label gradients of the trunk); sum = the plain mean BCE.",
        f"- Class-incremental, standard protocol: digits (balanced cut), 5 tasks of 2 classes, "
        f"MLP 64-64-10, SGD lr 0.1, batch 32, {sizes.ci_epochs} epochs per task, mean ± std "
        f"over {sizes.ci_seeds} seeds. Replay memory of {sizes.ci_memory} images per class "
        f"({10 * sizes.ci_memory} slots) filled by reservoir sampling over the stream, the "
        "current task's images included while it trains (experience replay's buffer); each "
        "step replays a batch of 32 from it. er: cross-entropy on the batch + on the replayed "
        "batch; er_ace: the labels trick (a softmax over the classes present in the incoming "
        "batch, Zeno et al. 2018; Caccia et al. 2022) on the batch, plain cross-entropy on the "
        "replay; agem: the batch gradient projected against the replayed batch's "
        "(`lg.project_replay`); +wa: weight aligning after each task (the new classes' weight "
        "rows scaled to the old rows' mean norm, Zhao et al. 2020); +frozen: the old classes' "
        "rows frozen (`lg.RowRules(frozen=...)`); joint: every task at once for as many "
        "epochs, the ceiling. Not tuned (one fixed recipe). Forgetting as in Chaudhry et al. "
        "2018; average accuracy after the last task (no task identity at test time); learning "
        "accuracy (Riemer et al. 2019): accuracy on a task right after training it.",
        "",
        "## Tuning (seed 0, validation balanced accuracy % of every configuration tried)",
        "",
        *_grid_lines(result),
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
