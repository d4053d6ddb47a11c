"""The report's figures, drawn with matplotlib's Agg backend and saved atomically as PNG."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labelgrad.report import atomic_path

__all__ = [
    "plot_conflicts",
    "plot_grad_norm_history",
    "plot_per_class_accuracy",
    "pyplot",
    "save_figure",
]


def pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend, or an ImportError naming the extra to install.

    Example:
        >>> plt = pyplot()
        >>> plt.get_backend().lower()
        'agg'
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'labelgrad[cli]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (never a half-written file), then close it.

    Example:
        >>> import tempfile, pathlib
        >>> fig = pyplot().figure()
        >>> save_figure(fig, pathlib.Path(tempfile.mkdtemp()) / "f.png").exists()
        True
    """
    plt = pyplot()
    final = Path(path)
    try:
        with atomic_path(final) as tmp:
            fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)
    return final


def plot_per_class_accuracy(
    accuracy: Mapping[str, Sequence[float]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    counts: Sequence[int] | None = None,
    title: str = "",
    ylabel: str = "test accuracy",
) -> Path:
    """Grouped bars: per-class accuracy of each method; the training counts on the labels.

    Args:
        accuracy: method name -> accuracy of each class (in [0, 1]).
        class_names: the class names, in order.
        path: the PNG to write.
        counts: training samples per class, shown under each class name.
        title: the figure title.
        ylabel: the y-axis label (any per-class score in [0, 1], e.g. "test F1").

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "acc.png"
        >>> plot_per_class_accuracy({"a": [0.5, 1.0]}, ["x", "y"], p).exists()
        True
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    k = max(1, len(accuracy))
    width = 0.8 / k
    for i, (name, values) in enumerate(accuracy.items()):
        xs = [c + (i - (k - 1) / 2) * width for c in range(len(class_names))]
        ax.bar(xs, list(values), width=width, label=name)
    labels = list(class_names)
    if counts is not None:
        labels = [f"{n}\n(n={m})" for n, m in zip(class_names, counts)]
    ax.set_xticks(range(len(class_names)), labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    # Outside the axes: whichever classes score high, the legend never hides a bar.
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return save_figure(fig, path)


def plot_grad_norm_history(
    history: Sequence[Sequence[float]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    smooth: int = 9,
) -> Path:
    """One line per class: the gradient norm at its logit per training step (log scale).

    Args:
        history: (steps, C) per-step norms, e.g. ``GradMonitor.recent_norms().tolist()``.
        class_names: the class names.
        path: the PNG to write.
        title: the figure title.
        smooth: moving-average window in steps (1 = none).

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
    fig, ax = plt.subplots(figsize=(8, 3.2))
    cmap = plt.get_cmap("viridis")
    for c, name in enumerate(class_names):
        ax.plot(data[:, c], color=cmap(c / max(1, len(class_names) - 1)), lw=1.2, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("‖dL/dlogit‖ of the class")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=min(len(class_names), 7), loc="upper right")
    return save_figure(fig, path)


def plot_conflicts(
    matrix: Sequence[Sequence[float]],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Heatmap of a label conflict matrix (cosine similarity of label gradients, in [-1, 1]).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "conf.png"
        >>> plot_conflicts([[1.0, -0.5], [-0.5, 1.0]], ["a", "b"], p).exists()
        True
    """
    plt = pyplot()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    im = ax.imshow(matrix, cmap="RdBu", vmin=-1, vmax=1)
    ax.set_xticks(range(k), list(class_names), rotation=90, fontsize=6)
    ax.set_yticks(range(k), list(class_names), fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine of label gradients")
    return save_figure(fig, path)
