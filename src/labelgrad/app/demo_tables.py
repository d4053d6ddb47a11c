"""The demo's rows (a method on an experiment, over seeds) and how they are shown: the table,
the per-experiment tables of the report and the takeaways.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

__all__ = ["Row", "format_rows"]

DIGITS_METHODS = ("plain_ce", "class_weights", "plain_sigmoid", "eqlv2", "row_rules")
"""The long-tail recipes (:mod:`labelgrad.app.recipes`) the demo runs on digits-LT."""
PARTIAL_METHODS = ("unknown_as_negative", "mask_unknown")
AGG_METHODS = ("sum", "PCGrad", "UPGrad")
IMBALANCES = (10.0, 100.0)


@dataclass
class Row:
    """One line of the demo table: a method on an experiment, over seeds."""

    experiment: str
    method: str
    metrics: dict[str, list[float]]
    step_ms: list[float]
    timed_ms: float = math.nan
    timed_ratio: float = math.nan
    note: str = ""

    def summary(self) -> dict[str, Any]:
        """Means and standard deviations (for JSON)."""
        out: dict[str, Any] = {"experiment": self.experiment, "method": self.method}
        for k, v in self.metrics.items():
            out[k] = {"mean": nan_mean(v), "std": nan_std(v), "values": v}
        out["train_step_ms"] = {"median": nan_median(self.step_ms), "values": self.step_ms}
        out["step_ms"] = self.timed_ms
        out["step_ratio"] = self.timed_ratio
        if self.note:
            out["note"] = self.note
        return out


def nan_mean(v: list[float]) -> float:
    return statistics.fmean(v) if v else math.nan


def nan_std(v: list[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def nan_median(v: list[float]) -> float:
    return statistics.median(v) if v else math.nan


def _fmt(v: list[float], scale: float = 100.0) -> str:
    return f"{scale * nan_mean(v):5.1f} ± {scale * nan_std(v):4.1f}"


METRIC_NAMES = {
    "balanced_acc": "balanced acc %",
    "few_shot_acc": "few-shot acc %",
    "map": "macro mAP %",
    "macro_f1": "macro F1 %",
}


def format_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """One experiment's table as (header, rows of strings): one metric per column.

    The rows must share their metrics (one experiment, or experiments measured alike).
    """
    keys = list(rows[0].metrics) if rows else []
    header = ["method", *(METRIC_NAMES[k] for k in keys), "step ms", "step × first"]
    out = [
        [
            r.method,
            *(_fmt(r.metrics[k]) for k in keys),
            f"{r.timed_ms:.2f}",
            f"{r.timed_ratio:.2f}x",
        ]
        for r in rows
    ]
    return header, out


def experiment_tables(rows: list[Row]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The demo's tables, one per experiment: (experiment, header, rows)."""
    names = list(dict.fromkeys(r.experiment for r in rows))
    return [(e, *format_rows([r for r in rows if r.experiment == e])) for e in names]


def difference(a: list[float], b: list[float], scale: float = 100.0) -> str:
    """The mean difference a - b (in points) and whether it exceeds the spread over seeds.

    The spread is the combined standard deviation sqrt(std_a^2 + std_b^2): a difference within
    it is not called a gain (nor a loss).

    Example:
        >>> difference([0.802, 0.798, 0.806], [0.80, 0.796, 0.804])
        '+0.2 (within the seed spread of 0.6: no clear difference)'
        >>> difference([0.90, 0.91, 0.92], [0.80, 0.81, 0.82])
        '+10.0 (a gain: more than the seed spread of 1.4)'
    """
    d = scale * (nan_mean(a) - nan_mean(b))
    if math.isnan(d):
        return "n/a"
    if min(len(a), len(b)) < 2:
        return f"{d:+.1f} (one seed: no spread measured)"
    spread = scale * math.hypot(nan_std(a), nan_std(b))
    if d > spread:
        return f"{d:+.1f} (a gain: more than the seed spread of {spread:.1f})"
    if d < -spread:
        return f"{d:+.1f} (a loss: more than the seed spread of {spread:.1f})"
    return f"{d:+.1f} (within the seed spread of {spread:.1f}: no clear difference)"


def takeaways(rows: list[Row]) -> list[str]:
    """What the results show, computed from the rows: mean differences in points, called a gain
    only where larger than the spread over seeds (:func:`difference`)."""
    find = {(r.experiment, r.method): r for r in rows}

    def gain(exp: str, method: str, base: str, metric: str) -> str:
        a, b = find.get((exp, method)), find.get((exp, base))
        if a is None or b is None:
            return "n/a"
        return difference(a.metrics[metric], b.metrics[metric])

    out = []
    for imb in IMBALANCES:
        exp = f"digits-LT IF={imb:g}"
        gains = {
            m: gain(exp, m, "plain_ce", "balanced_acc") for m in ("class_weights", "row_rules")
        }
        eql = gain(exp, "eqlv2", "plain_sigmoid", "balanced_acc")
        out.append(
            f"{exp}, balanced-accuracy points over plain cross-entropy: class_weights "
            f"{gains['class_weights']}, row_rules {gains['row_rules']}; eqlv2 over a plain "
            f"sigmoid classifier: {eql}."
        )
    exp = "Yeast, 50% labels hidden"
    out.append(
        f"{exp}, points over training on hidden labels as negatives: mask_unknown "
        f"{gain(exp, 'mask_unknown', 'unknown_as_negative', 'map')} mAP, "
        f"{gain(exp, 'mask_unknown', 'unknown_as_negative', 'macro_f1')} macro F1."
    )
    exp = "Yeast, label aggregation"
    agg = [f"{m} {gain(exp, m, 'sum', 'macro_f1')}" for m in AGG_METHODS[1:] if (exp, m) in find]
    out.append(
        f"{exp}, macro-F1 points over the summed loss: {', '.join(agg)} (the conflicts are "
        "measured on the training set in the label-conflict heatmap)."
    )
    return out


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
