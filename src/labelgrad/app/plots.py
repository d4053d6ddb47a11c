"""The report's figures, drawn with matplotlib's Agg backend and saved atomically as PNG.

One style for every figure, chosen to be read at a glance on a report page: at least 1000 px
wide, tick labels of at least 10 pt, axis labels everywhere, a categorical
palette for classes, legends outside the data, error bars where a mean over seeds is shown.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labelgrad.report import atomic_path

__all__ = [
    "plot_conflicts",
    "plot_confusion",
    "plot_grad_norm_history",
    "plot_per_class_accuracy",
    "plot_training_curves",
    "pyplot",
    "save_figure",
]

_DPI = 100
_WIDTH_IN = 12.0  # 1200 px before the tight bounding box trims the margins
_STYLE: dict[str, Any] = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "figure.titlesize": 14,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # Class names are shown as written: "$5" or "a_b" never turn into mathtext.
    "text.parse_math": False,
}


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend and the report style, or an ImportError naming the
    extra to install.

    Example:
        >>> plt = pyplot()
        >>> plt.get_backend().lower()
        'agg'
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'labelgrad[cli,data]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(_STYLE)  # type: ignore[arg-type,unused-ignore]
    return plt


def _palette(n: int) -> list[Any]:
    """A categorical palette of ``n`` distinguishable colours (tab10, then tab20)."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (never a half-written file), then close it.

    The figure is widened where needed so that the PNG is at least 1000 px wide.

    Example:
        >>> import tempfile, pathlib
        >>> fig = pyplot().figure()
        >>> save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "f.png").exists()
        True
    """
    plt = pyplot()
    final = Path(path)
    w, h = fig.get_size_inches()
    if w < _WIDTH_IN:  # scaled as a whole: the tight bounding box trims margins, not content
        fig.set_size_inches(_WIDTH_IN, h * _WIDTH_IN / w)
    try:
        with atomic_path(final) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight", pad_inches=0.3)
    finally:
        plt.close(fig)
    return final


def _legend_outside(ax: Any, **options: Any) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, **options)


def plot_per_class_accuracy(
    accuracy: Mapping[str, Sequence[float]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    counts: Sequence[int] | None = None,
    title: str = "",
    ylabel: str = "test accuracy",
    errors: Mapping[str, Sequence[float]] | None = None,
    count_label: str = "training samples",
    legend_title: str = "method",
) -> Path:
    """Grouped bars: per-class accuracy of each method; the sample counts under the class names.

    Args:
        accuracy: method name -> accuracy of each class (in [0, 1]; NaN: no bar).
        class_names: the class names, in order.
        path: the PNG to write.
        counts: samples per class, shown under each class name.
        title: the figure title.
        ylabel: the y-axis label (any per-class score in [0, 1], e.g. "test F1").
        errors: method name -> the standard deviation of each class's value (error bars).
        count_label: what ``counts`` are, e.g. "training samples" or "test samples" (the
            x-axis label says it; each tick shows n=count).
        legend_title: the legend's title (what the keys of ``accuracy`` are).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "acc.png"
        >>> plot_per_class_accuracy({"a": [0.5, 1.0]}, ["x", "y"], p).exists()
        True
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(_WIDTH_IN, 4.5))
    k = max(1, len(accuracy))
    width = 0.8 / k
    colors = _palette(k)
    for i, (name, values) in enumerate(accuracy.items()):
        xs = [c + (i - (k - 1) / 2) * width for c in range(len(class_names))]
        yerr = list(errors[name]) if errors is not None and name in errors else None
        ax.bar(xs, list(values), width=width, label=name, color=colors[i], yerr=yerr, capsize=2)
    labels = list(class_names)
    if counts is not None:
        labels = [f"{n}\nn={m}" for n, m in zip(class_names, counts)]
    rotate = len(class_names) > 12 or max(len(str(n)) for n in class_names) > 8
    ax.set_xticks(range(len(class_names)), labels, rotation=90 if rotate else 0)
    ax.set_ylim(0, 1.05)
    ax.set(
        xlabel="class" if counts is None else f"class (n = {count_label})",
        ylabel=ylabel,
        title=title,
    )
    ax.grid(axis="x", visible=False)
    _legend_outside(ax, title=legend_title)
    return save_figure(fig, path)


def plot_grad_norm_history(
    history: Sequence[Sequence[float]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    smooth: int = 9,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One line per class: the gradient norm at its logit per training step (log scale).

    Args:
        history: (steps, C) per-step norms, e.g. ``GradMonitor.recent_norms().tolist()``.
        class_names: the class names.
        path: the PNG to write.
        title: the figure title.
        smooth: moving-average window in steps (1 = none).
        ylim: the y range (give the same to figures compared side by side).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "norm.png"
        >>> plot_grad_norm_history([[1.0, 2.0], [0.5, 1.5]], ["a", "b"], p).exists()
        True
    """
    import numpy as np

    plt = pyplot()
    data = np.asarray(history, dtype=np.float64).reshape(-1, len(class_names))
    if smooth > 1 and len(data) >= smooth:
        kernel = np.ones(smooth) / smooth
        data = np.stack([np.convolve(col, kernel, mode="valid") for col in data.T], axis=1)
    fig, ax = plt.subplots(figsize=(_WIDTH_IN, 4.5))
    colors = _palette(len(class_names))
    for c, name in enumerate(class_names):
        ax.plot(data[:, c], color=colors[c], lw=1.4, label=name)
    ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    _label_short_log_axis(ax)
    ax.set(xlabel="training step", ylabel="‖dL/dlogit‖ of the class", title=title)
    _legend_outside(ax, title="class", ncol=1 if len(class_names) <= 15 else 2)
    return save_figure(fig, path)


def _label_short_log_axis(ax: Any) -> None:
    # A log axis spanning under two decades gets only one or two labelled ticks by default:
    # label the 1-2-5 steps inside it so that the values can be read.
    low, high = ax.get_ylim()
    if not (low > 0 and high / low < 100):
        return
    ticks = [
        m * 10.0**e
        for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for m in (1, 2, 5)
        if low <= m * 10.0**e <= high
    ]
    if len(ticks) < 3:  # under about half a decade: evenly spaced values read best
        from matplotlib.ticker import MaxNLocator

        ticks = [t for t in MaxNLocator(nbins=5).tick_values(low, high) if low <= t <= high]
    ax.set_yticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.set_yticks([], minor=True)
    ax.set_ylim(low, high)


def plot_conflicts(
    matrix: Sequence[Sequence[float]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Heatmap of a label conflict matrix (cosine similarity of label gradients, in [-1, 1]).

    The diagonal (always 1) is masked so that it does not set the colour scale; the diverging
    palette is centred at 0 (red: conflicting, blue: aligned) and spans the largest off-diagonal
    magnitude.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "conf.png"
        >>> plot_conflicts([[1.0, -0.5], [-0.5, 1.0]], ["a", "b"], p).exists()
        True
    """
    import numpy as np

    plt = pyplot()
    k = len(class_names)
    m = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(m, np.nan)
    off = np.abs(m[~np.isnan(m)])
    span = float(off.max()) if off.size and off.max() > 0 else 1.0
    fig, ax = plt.subplots(figsize=(_WIDTH_IN, 10.0))
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=-span, vmax=span)
    ax.set_xticks(range(k), list(class_names), rotation=90)
    ax.set_yticks(range(k), list(class_names))
    ax.set_xlabel("label")
    ax.set_ylabel("label")
    ax.grid(False)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine of label gradients")
    return save_figure(fig, path)


def plot_training_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    metric_name: str = "validation metric",
    title: str = "",
) -> Path:
    """Two panels over epochs: the training loss, and the validation metric, one line per run.

    Args:
        curves: run name -> {"loss": per-epoch training loss, "val_metric": per-epoch
            validation metric (NaN where there is none)}.
        path: the PNG to write.
        metric_name: the validation metric's name (the right panel's y label).
        title: the figure title.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "curves.png"
        >>> curves = {"run": {"loss": [1.0, 0.5], "val_metric": [0.4, 0.6]}}
        >>> plot_training_curves(curves, p).exists()
        True
    """
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(_WIDTH_IN, 4.5), sharex=True)
    colors = _palette(len(curves))
    for color, (name, c) in zip(colors, curves.items()):
        epochs = range(1, len(c["loss"]) + 1)
        left.plot(epochs, list(c["loss"]), marker="o", color=color, label=name)
        vals = list(c.get("val_metric", []))
        if vals and not all(math.isnan(v) for v in vals):
            right.plot(range(1, len(vals) + 1), vals, marker="o", color=color, label=name)
    left.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training loss")
    right.set(xlabel="epoch", ylabel=metric_name, title=f"validation {metric_name}")
    if title:
        fig.suptitle(title)
    _legend_outside(right, title="run")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """A confusion matrix, each row normalised to the true class's test count (shown as text).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "cm.png"
        >>> plot_confusion([[3, 1], [0, 4]], ["a", "b"], p).exists()
        True
    """
    import numpy as np

    plt = pyplot()
    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(_WIDTH_IN, 10.0))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                color = "white" if frac[i, j] > 0.6 else "black"
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=color)
    ax.set_xticks(range(k), list(class_names), rotation=90 if k > 12 else 0)
    ylabels = [f"{n} (test n={int(r)})" for n, r in zip(class_names, rows[:, 0])]
    ax.set_yticks(range(k), ylabels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.grid(False)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return save_figure(fig, path)
