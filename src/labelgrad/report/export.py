"""Export :class:`labelgrad.GradMonitor` statistics to CSV, JSON and TensorBoard."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labelgrad.policies.monitor import GradMonitor
from labelgrad.report._atomic import atomic_write_text

__all__ = ["log_monitor_tensorboard", "monitor_records", "save_monitor"]


def _names(mon: GradMonitor, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(mon.num_classes)]
    if len(class_names) != mon.num_classes:
        raise ValueError(
            f"class_names must have {mon.num_classes} entries (num_classes), got {len(class_names)}"
        )
    return [str(n) for n in class_names]


def monitor_records(
    mon: GradMonitor, class_names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One plain dict per class: its accumulated gradient statistics.

    Keys: ``class``, ``num_batches``, ``rms_norm`` (root mean squared per-batch norm),
    ``last_norm``, ``pos_abs``, ``neg_abs`` (accumulated |gradient| of positive / negative
    entries) and ``pos_neg_ratio``. Reads the buffers back to the host: call it for reporting.

    Example:
        >>> import torch, labelgrad as lg
        >>> mon = lg.monitor(num_classes=2)
        >>> z = torch.zeros(4, 2, requires_grad=True)
        >>> mon(z, torch.tensor([0, 1, 1, 1])).sum().backward()
        >>> [r["pos_abs"] for r in monitor_records(mon, ["cat", "dog"])]
        [1.0, 3.0]
    """
    names = _names(mon, class_names)
    rms = mon.mean_norm().tolist()
    last, pos, neg = mon.last_norm.tolist(), mon.pos_abs.tolist(), mon.neg_abs.tolist()
    batches = float(mon.num_batches)
    return [
        {
            "class": names[c],
            "num_batches": batches,
            "rms_norm": rms[c],
            "last_norm": last[c],
            "pos_abs": pos[c],
            "neg_abs": neg[c],
            "pos_neg_ratio": pos[c] / neg[c] if neg[c] > 0 else None,
        }
        for c in range(mon.num_classes)
    ]


def save_monitor(
    mon: GradMonitor, path: str | os.PathLike[str], class_names: Sequence[str] | None = None
) -> Path:
    """Write a monitor's statistics to ``path`` (atomically), in the format its suffix names.

    - ``.json``: ``{"classes": [...records...], "history": [[norm per class] per batch]}``
      (strict JSON: a non-finite statistic is written as null);
    - ``.csv``: one row per class with the :func:`monitor_records` columns;
    - ``.history.csv`` (suffix of the stem): one row per recorded batch, one column per class.

    Example:
        >>> import tempfile, pathlib, torch, labelgrad as lg
        >>> mon = lg.monitor(num_classes=2, history=4)
        >>> z = torch.ones(3, 2, requires_grad=True)
        >>> mon(z, torch.tensor([0, 1, 1])).sum().backward()
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> print(save_monitor(mon, out / "m.history.csv").read_text().strip())
        step,0,1
        0,1.7320507764816284,1.7320507764816284
    """
    file = Path(path)
    names = _names(mon, class_names)
    history = mon.recent_norms().tolist()
    if file.suffix == ".json":
        payload = {"classes": monitor_records(mon, names), "history": history}
        # JSON has no NaN or inf: non-finite statistics are written as null.
        text = json.dumps(_finite_or_none(payload), indent=1, allow_nan=False)
        atomic_write_text(file, text + "\n")
        return file
    if file.suffix != ".csv":
        raise ValueError(f"path must end in .json or .csv, got {file.name!r}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if file.name.endswith(".history.csv"):
        first = int(mon.history_len) - len(history)
        writer.writerow(["step", *names])
        for i, row in enumerate(history):
            writer.writerow([first + i, *row])
    else:
        records = monitor_records(mon, names)
        writer.writerow(list(records[0]))
        for r in records:
            writer.writerow(["" if v is None else v for v in r.values()])
    atomic_write_text(file, buf.getvalue())
    return file


def _finite_or_none(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None (recursively)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x


def log_monitor_tensorboard(
    mon: GradMonitor,
    log_dir: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    *,
    tag: str = "grad_norm",
) -> Path:
    """Write the monitor's per-batch norm history as TensorBoard scalars (one per class).

    Needs the ``tensorboard`` extra (``pip install 'labelgrad[tensorboard]'``).

    Example:
        >>> import tempfile, torch, labelgrad as lg
        >>> mon = lg.monitor(num_classes=2, history=4)
        >>> _ = log_monitor_tensorboard(mon, tempfile.mkdtemp())  # doctest: +SKIP
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(
            "TensorBoard export needs tensorboard: pip install 'labelgrad[tensorboard]'"
        ) from None
    names = _names(mon, class_names)
    history = mon.recent_norms().tolist()
    first = int(mon.history_len) - len(history)
    folder = Path(log_dir)
    with SummaryWriter(log_dir=str(folder)) as writer:
        for i, row in enumerate(history):
            writer.add_scalars(tag, dict(zip(names, row)), global_step=first + i)
        for r in monitor_records(mon, names):
            writer.add_scalar(f"{tag}_rms/{r['class']}", r["rms_norm"], global_step=first)
    return folder
