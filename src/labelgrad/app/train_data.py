"""The data of ``labelgrad train``: reading the configured files, checking the labels, the
seeded test and validation splits, and the memory check that runs before anything is sized.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from labelgrad.app.datafiles import csv_data_lines, label_problem, read_table
from labelgrad.app.datasets import (
    DataError,
    Dataset,
    Task,
    read_idx,
    read_npz,
)
from labelgrad.app.train_config import ConfigError, TrainConfig

MONITOR_HISTORY = 2048
"""Steps of per-class gradient norms the run's monitor keeps (a ring buffer; fixed so that a
checkpoint resumes under a config with more epochs)."""


MAX_UNUSED_CLASSES = 16
"""Without a declared ``num_classes``, C = max label + 1 may leave at most this many class ids
(or as many as there are distinct labels, if more) without a sample: beyond that a label is
far more likely a typo (1000000 in a 2-class file) than a class, and C would size the model."""


def _read_arrays(d: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """The features (N, D) float64, the raw labels of the configured data file(s), and the
    class names a CSV gives (string labels, or the header names of multi-hot label columns)."""
    fmt = d["format"]
    names: tuple[str, ...] | None = None
    if fmt == "csv":
        table = read_table(
            d["path"],
            label_columns=d["label_columns"] or [-1],
            delimiter=d["delimiter"],
            header=d["header"],
        )
        x, y, names = table.features, table.labels, table.label_names
        if len(table.label_columns) > 1 and table.header is not None:
            names = tuple(table.header[j] for j in table.label_columns)
    elif fmt == "npz":
        x, y = read_npz(d["path"], x_key=d["x_key"], y_key=d["y_key"])
    else:
        images, labels = read_idx(d["path"]), read_idx(d["labels"])
        if len(images) != len(labels):
            raise DataError(f"{d['path']}: {len(images)} images but {len(labels)} labels")
        x = images.reshape(len(images), -1).astype(np.float64)
        if images.dtype == np.uint8:
            x = x / 255.0
        y = labels
    if not np.isfinite(x).all():
        raise DataError(f"{d['path']}: features contain NaN or infinity")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1 and d["task"] != "multilabel":
        y = y[:, 0]  # one label column of class indices (a declared multilabel keeps its column)
    problem = label_problem(y)
    if problem is not None:
        index, why = problem
        raise DataError(f"{d['path']}: {_where(d, index[0])} {why}")
    if len(x) < 2:
        raise DataError(f"{d['path']}: needs at least 2 samples, has {len(x)}")
    return x, y, names


def _where(d: Mapping[str, Any], index: int) -> str:
    """Where sample ``index`` is in the data file: a CSV's line number, else the sample number."""
    if d["format"] == "csv":
        return (
            f"line {csv_data_lines(d['path'], delimiter=d['delimiter'], header=d['header'])[index]}"
        )
    return f"sample {index + 1}"


def _num_classes(y: np.ndarray, d: Mapping[str, Any]) -> int:
    """C of class-index labels: checked against ``[data] num_classes``, or inferred when
    plausible."""
    path: str = d["path"]
    declared: int | None = d["num_classes"]
    if y.min(initial=0) < 0:
        row = int(np.argmin(y))
        raise DataError(f"{path}: {_where(d, row)} has label {y[row]}; class labels are >= 0")
    top = int(np.argmax(y))
    if declared is not None:
        if y[top] >= declared:
            raise DataError(
                f"{path}: {_where(d, top)} has label {y[top]}, out of range for "
                f"[data] num_classes = {declared} (labels 0..{declared - 1})"
            )
        return declared
    distinct = np.unique(y)
    c = int(y[top]) + 1
    if c - len(distinct) > max(MAX_UNUSED_CLASSES, len(distinct)):
        rest = distinct[:-1]
        raise DataError(
            f"{path}: {_where(d, top)} has label {y[top]}, but the other labels are "
            f"{len(rest)} values in {rest.min(initial=0)}..{rest.max(initial=0)}: a typo? "
            f"(set [data] num_classes = {c} if there really are {c} classes)"
        )
    return c


def _labels(y: np.ndarray, d: Mapping[str, Any]) -> tuple[np.ndarray, Task, int]:
    """The labels as int64, the task and the number of classes, each checked."""
    path = d["path"]
    task: Task = d["task"] or ("multiclass" if y.ndim == 1 else "multilabel")
    y = y.astype(np.int64)
    if task == "multiclass":
        if y.ndim != 1:
            raise DataError(f"{path}: multiclass data needs one label column, got {y.shape}")
        return y, task, _num_classes(y, d)
    if y.ndim != 2:
        raise DataError(f"{path}: multilabel data needs label columns, got {y.shape}")
    c = y.shape[1]
    if d["num_classes"] is not None and d["num_classes"] != c:
        raise DataError(f"{path}: num_classes={d['num_classes']} but {c} label columns")
    bad = ~np.isin(y, (-1, 0, 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{path}: {_where(d, row)}, label column {col + 1} is {y[row, col]}; multi-hot "
            "labels must be 0, 1 or -1 (unknown)"
        )
    return y, task, c


@dataclass(frozen=True)
class Validation:
    """The validation split (carved from the training part; empty with validation_fraction 0)."""

    x: Tensor
    y: Tensor


def load_data(cfg: TrainConfig, seed: int) -> tuple[Dataset, Validation]:
    """Read, check and split the data: a seeded test split, then validation from the rest."""
    d = cfg.data
    x, raw, names = _read_arrays(d)
    y, task, c = _labels(raw, d)
    check_memory(cfg, x.shape[1], c)  # before anything is sized by C
    te, va, tr = split_indices(y, d["test_fraction"], d["validation_fraction"], seed)
    xtr, xva, xte = x[tr], x[va], x[te]
    if d["standardize"]:
        # z-scores do not change when a column is scaled first; scaling by the column's largest
        # magnitude keeps the squares of the variance finite for features near 1e300.
        scale = np.abs(xtr).max(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        xtr, xva, xte = xtr / scale, xva / scale, xte / scale
        mean, std = xtr.mean(axis=0), xtr.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        xtr, xva, xte = (xtr - mean) / std, (xva - mean) / std, (xte - mean) / std
    _check_float32(d, np.concatenate([xtr, xva, xte]))

    def t(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    warnings = _label_warnings(y, tr, task, c, d, names)
    data = Dataset(
        name=Path(d["path"]).name,
        x_train=t(xtr, torch.float32),
        y_train=t(y[tr], torch.long),
        x_test=t(xte, torch.float32),
        y_test=t(y[te], torch.long),
        class_names=_class_names(names, c),
        task=task,
        meta={"source": d["path"], "seed": seed, "warnings": warnings},
    )
    return data, Validation(t(xva, torch.float32), t(y[va], torch.long))


def _check_float32(d: Mapping[str, Any], x: np.ndarray) -> None:
    """The model trains in float32: a feature beyond its range would be infinite (a run that
    fails at its first step), a nonzero one below its smallest value silently zero."""
    with np.errstate(over="ignore", under="ignore"):  # found below, reported as one line
        x32 = x.astype(np.float32)
    big, lost = ~np.isfinite(x32), (x32 == 0) & (x != 0)
    if big.any() or lost.any():
        i, j = np.argwhere(big if big.any() else lost)[0]
        fix = "rescale the features" if d["standardize"] else "set [data] standardize = true"
        raise DataError(
            f"{d['path']}: feature column {j + 1} has {'standardized ' * d['standardize']}value "
            f"{x[i, j]:.3g}, outside the float32 range the model trains in (nonzero magnitudes "
            f"{np.finfo(np.float32).smallest_subnormal:.2g} to {np.finfo(np.float32).max:.3g}); "
            f"{fix}"
        )


def _label_warnings(
    y: np.ndarray,
    train: np.ndarray,
    task: Task,
    c: int,
    d: Mapping[str, Any],
    label_names: tuple[str, ...] | None,
) -> list[str]:
    """Classes the training split never shows (a typo that is still a valid label, or a class
    whose only samples went to the test split), naming each class and where its samples are.
    A multi-class label column of one class is refused: a model of one class learns nothing."""
    path = d["path"]
    if task == "multiclass":
        present = np.unique(y)
        if len(present) < 2:
            source = {
                "csv": f"the label column ([data] label_columns = {d['label_columns'] or [-1]})",
                "npz": f"the labels (array {d['y_key']!r}, [data] y_key)",
            }.get(d["format"], "the labels file ([data] labels)")
            only = present[0] if label_names is None else repr(label_names[present[0]])
            raise DataError(
                f"{path}: {source} holds one class only ({only}); a classifier needs 2 or more "
                "(another column?)"
            )
        counts = np.bincount(y[train], minlength=c)
        total = np.bincount(y, minlength=c)
        out = []
        for k in np.flatnonzero(counts == 0)[:5]:
            rows = np.flatnonzero(y == k)
            if len(rows):
                out.append(
                    f"class {k} has no training sample (its {len(rows)} sample(s) from "
                    f"{_where(d, int(rows[0]))} went to the test or validation split): a typo?"
                )
        # The stratified split keeps a class of one sample in training, so a typo that is still
        # a valid label shows as a class of one sample: name it and its line.
        for k in np.flatnonzero((total == 1) & (counts == 1))[:5]:
            row = int(np.flatnonzero(y == k)[0])
            out.append(f"class {k} has a single sample ({_where(d, row)}): a typo?")
        unseen = np.flatnonzero(np.bincount(y, minlength=c) == 0)
        if len(unseen):
            shown = ", ".join(str(k) for k in unseen[:8]) + (", ..." if len(unseen) > 8 else "")
            out.append(
                f"{len(unseen)} of {c} classes have no sample at all ({shown}); their accuracy "
                "is not measured"
            )
        return out
    yt = y[train]
    names = _class_names(label_names, c)
    return [
        f"label {names[k]!r} (column {k + 1} of the labels) has no positive training sample"
        for k in np.flatnonzero(~(yt == 1).any(axis=0))[:8]
    ]


def _class_names(names: tuple[str, ...] | None, c: int) -> tuple[str, ...]:
    """The CSV's names (string labels, multi-hot header names) where it gives them, else the
    class indices (a declared num_classes beyond the names adds indices)."""
    given = names or ()
    return given[:c] + tuple(str(k) for k in range(len(given), c))


def split_indices(
    y: np.ndarray, test_fraction: float, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (test, validation, train) indices, stratified by class.

    Single-label data: each class gives round(fraction x its count) samples to the test and the
    validation split (a class with one sample stays in training), so that a long-tailed class is
    represented in each split as in the data, not by the luck of one permutation (a stratified
    split that would leave the test or training part empty is split at random). Multi-label data
    (labels in {0, 1}, -1 unknown): the random split's sizes, filled by iterative stratification
    (:func:`_iterative_split`), so that each label's known positives fall into the splits in
    proportion.

    Example:
        >>> y = np.array([0] * 8 + [1] * 2)
        >>> te, va, tr = split_indices(y, 0.5, 0.0, seed=0)
        >>> np.bincount(y[te]).tolist(), np.bincount(y[tr]).tolist()
        ([4, 1], [4, 1])
    """
    n = len(y)
    perm = np.random.default_rng(seed).permutation(n)
    if y.ndim == 1:
        # Classes in a row, in the permutation's order within each class.
        order = perm[np.argsort(y[perm], kind="stable")]
        ys = y[order]
        rank = np.arange(n) - np.searchsorted(ys, ys, side="left")
        count = np.bincount(ys)[ys]
        n_te = np.rint(test_fraction * count)
        n_te_va = np.rint((test_fraction + validation_fraction) * count)
        is_te, is_va = rank < n_te, (rank >= n_te) & (rank < n_te_va)
        if is_te.any() and not (is_te | is_va).all():
            where = np.empty(n, dtype=np.int64)
            where[perm] = np.arange(n)  # each split keeps the permutation's order

            def part(mask: np.ndarray) -> np.ndarray:
                idx: np.ndarray = order[mask]
                out: np.ndarray = idx[np.argsort(where[idx])]
                return out

            return part(is_te), part(is_va), part(~(is_te | is_va))
    n_test = min(n - 1, max(1, round(test_fraction * n)))
    n_val = min(n - n_test - 1, round(validation_fraction * n))
    if y.ndim == 2:
        return _iterative_split(y == 1, (n_test, n_val, n - n_test - n_val), perm)
    return perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]


def _iterative_split(
    positive: np.ndarray, sizes: tuple[int, int, int], perm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iterative stratification of multi-label data into parts of the given sizes.

    Sechidis, Tsoumakas & Vlahavas, `On the Stratification of Multi-Label Data
    <https://doi.org/10.1007/978-3-642-23808-6_3>`_ (ECML PKDD 2011), Algorithm 1, with parts
    of fixed size: the label with the fewest positives left is placed first, each of its samples
    (in the seeded permutation's order) into the open part that still wants the most of that
    label (ties: the most room left, then the first part); samples without a known positive fill
    the room left. Hand-written (about 20 lines) rather than a dependency: the packages that
    implement it are not kept up, and none takes fixed part sizes or unknown labels. A loop over
    samples, once per run, before training.

    Args:
        positive: (N, C) bool, the known positive labels.
        sizes: the number of samples of each part (summing to N).
        perm: the seeded permutation of the N samples (the order samples are placed in).

    Returns:
        The indices of each part, each in the permutation's order.
    """
    pos = positive[perm]
    room = np.array(sizes, dtype=np.int64)
    want = np.outer(room / len(perm), pos.sum(axis=0))  # (parts, C) positives each part wants
    part = np.full(len(perm), -1, dtype=np.int64)
    left = pos.sum(axis=0)
    while (left > 0).any():
        label = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        for row in np.flatnonzero(pos[:, label] & (part < 0)):
            score = np.where(room > 0, want[:, label], -np.inf)
            ties = np.flatnonzero(score == score.max())
            chosen = int(ties[np.argmax(room[ties])])
            part[row], room[chosen] = chosen, room[chosen] - 1
            want[chosen] -= pos[row]
            left -= pos[row]
    unplaced = np.flatnonzero(part < 0)
    part[unplaced] = np.repeat(np.arange(len(room)), room)  # the room left, in order
    test, val, train = (perm[part == k] for k in range(3))
    return test, val, train


def check_memory(cfg: TrainConfig, num_features: int, num_classes: int) -> None:
    """Refuse a model whose parameters, gradients, optimizer state and monitor would not fit.

    The estimate is 4 float32 copies of every parameter (weights, gradient, two Adam moments)
    and the monitor's float64 history of MONITOR_HISTORY x C norms, compared with the machine's
    memory (and the process's address-space limit, where one is set).

    Raises:
        ConfigError: one line with the estimate and what is available.
    """
    widths = [num_features, *cfg.model["hidden"], num_classes]
    params = sum((a + 1) * b for a, b in itertools.pairwise(widths))
    need = 4 * 4 * params + 8 * (MONITOR_HISTORY + 4) * num_classes
    have = _available_memory()
    if need > have:
        raise ConfigError(
            f"{cfg.file.name}: a model of {num_features} features, [model] hidden = "
            f"{cfg.model['hidden']} and {num_classes} classes would need about {_bytes(need)} "
            f"of memory; {_bytes(have)} is available"
        )


def _available_memory() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            total = min(total, soft)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        pass
    return int(total * 0.8)


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover
