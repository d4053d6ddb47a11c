"""The outputs of ``labelgrad train``: metrics.json first, then the monitor exports and the
figures, the HTML report last (each written atomically)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

import labelgrad as lg
from labelgrad.app.datasets import Dataset
from labelgrad.app.html import Section, write_report
from labelgrad.app.plots import (
    plot_confusion,
    plot_grad_norm_history,
    plot_per_class_accuracy,
    plot_training_curves,
)
from labelgrad.report import atomic_write_text, save_monitor

__all__ = ["METRIC_LABELS", "TRAIN_FILES", "write_train_outputs"]

TRAIN_FILES = (
    "checkpoint.pt",
    "metrics.json",
    "monitor.csv",
    "monitor.history.csv",
    "monitor.json",
    "training_curves.png",
    "per_class.png",
    "confusion.png",
    "grad_norm.png",
    "report.html",
)
"""Every file ``labelgrad train`` may write into its output folder."""

METRIC_LABELS = {
    "accuracy": "accuracy %",
    "balanced_accuracy": "balanced accuracy %",
    "map": "mAP %",
    "worst_ap": "worst-label AP %",
    "macro_f1": "macro F1 %",
    "micro_f1": "micro F1 %",
}
"""Column names of the report's metric table (one metric per column, in %)."""


MAX_CLASS_TABLE = 100
"""Up to this many classes, the report lists each class by name with its test count and score."""


def write_train_outputs(
    folder: Path,
    config_file: Path,
    data: Dataset,
    monitor: lg.GradMonitor,
    summary: dict[str, Any],
) -> None:
    """metrics.json first (so a failing figure never loses the results), then the rest."""
    files = summary.setdefault("files", ["checkpoint.pt", "metrics.json"])
    atomic_write_text(folder / "metrics.json", json.dumps(summary, indent=1) + "\n")
    names = list(data.class_names)
    for fname in ("monitor.csv", "monitor.history.csv", "monitor.json"):
        save_monitor(monitor, folder / fname, names)
        files.append(fname)
    files += _figures(folder, data, monitor, summary)
    write_report(
        folder / "report.html",
        f"labelgrad train: {config_file.name}",
        _sections(config_file, data, summary, files),
        footer=f"labelgrad {lg.__version__}, torch {torch.__version__}",
    )
    files.append("report.html")
    atomic_write_text(folder / "metrics.json", json.dumps(summary, indent=1) + "\n")


def _test_counts(data: Dataset) -> list[int]:
    if data.task == "multiclass":
        return torch.bincount(data.y_test, minlength=data.num_classes).tolist()
    return (data.y_test == 1).sum(dim=0).tolist()


def _figures(
    folder: Path, data: Dataset, monitor: lg.GradMonitor, summary: dict[str, Any]
) -> list[str]:
    names = list(data.class_names)
    runs = {"configured": summary}
    if "baseline" in summary:
        runs["baseline (plain loss)"] = summary["baseline"]
    metric = METRIC_LABELS[summary["val_metric_name"]].removesuffix(" %")
    plot_training_curves(
        {k: {"loss": r["epoch_loss"], "val_metric": r["val_metric"]} for k, r in runs.items()},
        folder / "training_curves.png",
        metric_name=metric,
    )
    files = ["training_curves.png"]
    score = "accuracy" if data.task == "multiclass" else "F1"
    plot_per_class_accuracy(
        {k: [0.0 if math.isnan(v) else v for v in r["per_class"]] for k, r in runs.items()},
        names,
        folder / "per_class.png",
        counts=_test_counts(data),
        count_label="test samples" if data.task == "multiclass" else "positive test samples",
        title=f"per-class test {score}",
        ylabel=f"test {score}",
        legend_title="run",
    )
    files.append("per_class.png")
    if summary.get("confusion") is not None:
        plot_confusion(
            summary["confusion"], names, folder / "confusion.png", title="test confusion matrix"
        )
        files.append("confusion.png")
    history = monitor.recent_norms().tolist()
    if history:
        plot_grad_norm_history(
            history, names, folder / "grad_norm.png", title="per-class ‖dL/dlogit‖ per step"
        )
        files.append("grad_norm.png")
    return files


def _takeaways(summary: dict[str, Any]) -> list[str]:
    out = []
    base = summary.get("baseline")
    if base is not None:
        for k, v in summary["test"].items():
            d = 100 * (v - base["test"][k])
            label = METRIC_LABELS.get(k, k).replace(" %", "")
            out.append(f"{label}: {d:+.1f} points over the plain-loss baseline (same seed).")
    for r, name in ((summary, "configured run"), (base, "baseline")):
        if r is not None and r["stopped_early"]:
            out.append(f"The {name} stopped early at epoch {r['epochs_trained']} (patience).")
    out += [f"Warning: {w}." for w in summary["warnings"]]
    out += [f"Note: {n}." for n in summary["notes"]]
    return out


def _sections(
    config_file: Path, data: Dataset, summary: dict[str, Any], files: list[str]
) -> list[Section]:
    metrics = list(summary["test"])
    rows: list[list[object]] = [
        ["configured", *(f"{100 * summary['test'][k]:.1f}" for k in metrics)]
    ]
    if "baseline" in summary:
        b = summary["baseline"]["test"]
        rows.append(["baseline (plain loss)", *(f"{100 * b[k]:.1f}" for k in metrics)])
    sections = [
        Section(
            "Test results",
            [
                f"{summary['train_samples']} training and {summary['test_samples']} test samples "
                f"({data.task}, {data.num_classes} classes), seed {summary['seed']}, "
                f"{summary['epochs_trained']} of {summary['epochs']} epochs."
            ],
            ["run", *(METRIC_LABELS.get(k, k) for k in metrics)],
            rows,
            bullets=_takeaways(summary),
        ),
        _figure(
            "Training",
            "training_curves.png",
            "Left: the mean training loss of each epoch. Right: the validation metric after "
            "each epoch (a split of the training data; early stopping and the 'still "
            "rising' warning read it).",
        ),
    ]
    if "confusion.png" in files:
        sections.append(
            _figure(
                "Confusion matrix",
                "confusion.png",
                "Test counts; colour: the share of each true class.",
            )
        )
    score = "accuracy" if data.task == "multiclass" else "F1"
    per_class = _figure(
        f"Per-class test {score}",
        "per_class.png",
        f"Under each class: its test count. Classes from the data: {data.name}.",
    )
    if data.num_classes <= MAX_CLASS_TABLE:
        # The names as the data spells them (the figure's tick labels may be cut short).
        counts = _test_counts(data)
        per_class.header = ["class", "test samples", f"test {score} %"]
        per_class.rows = [
            [name, counts[k], "-" if math.isnan(v) else f"{100 * v:.1f}"]
            for k, (name, v) in enumerate(zip(data.class_names, summary["per_class"]))
        ]
    sections.append(per_class)
    if "grad_norm.png" in files:
        sections.append(
            _figure(
                "Per-class gradient norm",
                "grad_norm.png",
                "‖dL/dlogit‖ of each class per step (lg.monitor), 9-step average.",
            )
        )
    sections.append(Section("Config", code=config_file.read_text(encoding="utf-8")))
    # Exactly this run's files: a new run removes the previous run's (labelgrad.app.outputs).
    sections.append(Section("Files", bullets=[*files, "report.html"]))
    return sections


def _figure(title: str, image: str, caption: str) -> Section:
    """A report section of one image and its caption."""
    return Section(title, images=[image], captions=[caption])
