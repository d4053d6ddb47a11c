"""``labelgrad train CONFIG.toml``: an MLP on the user's data with declared gradient control.

The config (TOML) has these tables; every key is checked (unknown keys, wrong types and missing
files are one-line errors)::

    [data]                      # required
    path = "train.csv"          # .csv / .csv.gz, .npz, or an idx images file (.gz or raw)
    format = "csv"              # csv | npz | idx; default: from the suffix
    labels = "labels.idx.gz"    # idx only: the labels file
    label_columns = [-1]        # csv only: the label column(s); several = multi-hot labels
    x_key = "x"                 # npz only (with y_key = "y")
    task = "multiclass"         # or "multilabel" (multi-hot labels in {0, 1}, -1 = unknown)
    num_classes = 10            # default: max label + 1 (multiclass; refused when most class
                                #   ids would have no sample: a label typo) / label columns
    test_fraction = 0.2         # seeded split (seed = --seed)
    validation_fraction = 0.1   # carved from the rest: early stopping and the "still rising"
                                #   warning read it (0: no validation split)
    standardize = true          # z-score features with training statistics

    [model]
    hidden = [128]              # hidden layer widths of the MLP

    [train]
    epochs = 10
    patience = 0                # > 0: stop when the validation metric has not improved for
                                #   this many epochs (0: train every epoch)
    lr = 0.001
    batch_size = 64
    optimizer = "adam"          # adam | adamw | sgd
    weight_decay = 0.0
    momentum = 0.9              # sgd only

    [[policies]]                # level 1, applied in order at the logits
    name = "class_weights"      # mask_unknown | class_weights | pos_neg_weights | eqlv2 |
    beta = 0.999                #   clip_per_class | clip_per_sample | freeze_classes
                                # (class_weights: weights = [...] or beta = effective number)

    [rows]                      # level 2: lg.RowRules on the head
    frozen = [0]
    lr_scale = [1.0, 2.0]       # or lr_scale_power = 0.5: row c gets (n_max / n_c) ** power
    skip_absent = true

    [aggregation]               # level 3 (multilabel): lg.aggregate_backward on the trunk
    aggregator = "UPGrad"       # an lg.aggregators class (the error lists the valid names)
    engine = "auto"             # auto | exact | representation

Outputs in ``--out`` (each written atomically: a temporary file renamed into place):
``checkpoint.pt`` after every epoch (``torch.save``; loaded with ``weights_only=True``),
``metrics.json`` (written before any figure), ``monitor.csv`` / ``monitor.json`` (per-class
gradient statistics), ``training_curves.png``, ``per_class.png``, ``confusion.png``
(single-label), ``grad_norm.png`` and ``report.html``. ``--baseline`` also trains plain
cross-entropy (BCE for multi-label data) from the same seed and reports it beside the run.

``--resume`` continues from the checkpoint exactly as an uninterrupted run would (the batches of
each epoch are a function of the seed and the epoch; model, optimizer and policy state are
restored). The checkpoint records the config, the seed and the data (path, size, SHA-256); a
resume with another seed or other data is refused, and every loaded field (epoch, losses, tensor
shapes and dtypes of the model, optimizer and policy states) is checked first.

Every bad input (config, data, flag, checkpoint, a full disk) is one line on stderr and exit 2;
values that would size an allocation (num_classes, hidden widths, labels) are checked against
the memory they would need before anything is allocated.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import labelgrad as lg
from labelgrad.app.datasets import (
    DataError,
    Dataset,
    Task,
    csv_header,
    read_csv,
    read_idx,
    read_npz,
)
from labelgrad.app.metrics import multiclass_metrics, multilabel_metrics
from labelgrad.app.recipes import effective_number_weights, tail_lr_scale
from labelgrad.app.train_report import write_train_outputs
from labelgrad.app.training import MLP, epoch_batches, progress_bar
from labelgrad.report import atomic_path, check_writable_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = ["POLICY_KEYS", "ConfigError", "TrainConfig", "load_config", "run_train"]

CHECKPOINT_VERSION = 2
"""Version 2 adds the seed and the data's identity (path, size, SHA-256) to the checkpoint."""
CHECKPOINT_KEYS = ("version", "fingerprint", "seed", "data", "epoch", "model", "optimizer")
_CHECKPOINT_REST = ("policy", "losses", "validation")
MONITOR_HISTORY = 2048
"""Steps of per-class gradient norms the run's monitor keeps (a ring buffer; fixed so that a
checkpoint resumes under a config with more epochs)."""


class ConfigError(ValueError):
    """The config is invalid; the message is one line naming the table and key."""


# Schema: table -> key -> (accepted types, default; _REQUIRED for required keys).
_REQUIRED = object()
_NUM = (int, float)
_SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "data": {
        "path": ((str,), _REQUIRED),
        "format": ((str,), None),
        "labels": ((str,), None),
        "label_columns": ((list,), None),
        "x_key": ((str,), "x"),
        "y_key": ((str,), "y"),
        "task": ((str,), None),
        "num_classes": ((int,), None),
        "test_fraction": (_NUM, 0.2),
        "validation_fraction": (_NUM, 0.1),
        "standardize": ((bool,), True),
    },
    "model": {"hidden": ((list,), [128])},
    "train": {
        "epochs": ((int,), 10),
        "patience": ((int,), 0),
        "lr": (_NUM, 1e-3),
        "batch_size": ((int,), 64),
        "optimizer": ((str,), "adam"),
        "weight_decay": (_NUM, 0.0),
        "momentum": (_NUM, 0.9),
    },
    "rows": {
        "frozen": ((list,), None),
        "lr_scale": ((list,), None),
        "lr_scale_power": (_NUM, None),
        "skip_absent": ((bool,), True),
    },
    "aggregation": {"aggregator": ((str,), _REQUIRED), "engine": ((str,), "auto")},
}

POLICY_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "mask_unknown": {},
    "class_weights": {"weights": (list,), "beta": _NUM},
    "pos_neg_weights": {"pos": (*_NUM, list), "neg": (*_NUM, list)},
    "eqlv2": {"gamma": _NUM, "mu": _NUM, "alpha": _NUM},
    "clip_per_class": {"max_norm": _NUM},
    "clip_per_sample": {"max_norm": _NUM},
    "freeze_classes": {"classes": (list,)},
}
"""The policies a config may declare, with the keys each accepts besides ``name``."""

_OPTIMIZERS = ("adam", "adamw", "sgd")


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    names[list] = "an array"
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _check_type(where: str, value: Any, types: tuple[type, ...]) -> None:
    # TOML booleans are ints in Python: never accept one where a number is meant.
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(types)}, got {value!r}")


def _table(raw: Mapping[str, Any], name: str, file: str) -> dict[str, Any]:
    schema = _SCHEMA[name]
    section = raw.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: [{name}] must be a table")
    for key in section:
        if key not in schema:
            raise ConfigError(
                f"{file}: [{name}] unknown key {key!r} (expected one of: {', '.join(schema)})"
            )
    out = {}
    for key, (types, default) in schema.items():
        if key in section:
            _check_type(f"{file}: [{name}] {key}", section[key], types)
            out[key] = section[key]
        elif default is _REQUIRED:
            raise ConfigError(f"{file}: [{name}] is missing the required key {key!r}")
        else:
            out[key] = default
    return out


def _check_list(where: str, values: list[Any], types: tuple[type, ...]) -> None:
    for v in values:
        _check_type(f"{where} entries", v, types)


@dataclass(frozen=True)
class TrainConfig:
    """A validated ``labelgrad train`` config (see the module docstring for the keys)."""

    file: Path
    data: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    policies: list[dict[str, Any]]
    rows: dict[str, Any] | None
    aggregation: dict[str, Any] | None

    def fingerprint(self) -> str:
        """A hash of everything but the epoch count and patience: a checkpoint only resumes the
        same run."""
        payload = {
            # The data files are identified by path, size and content in the checkpoint itself
            # (data_identity), with a message that says which changed.
            "data": {k: v for k, v in self.data.items() if k not in ("path", "labels")},
            "model": self.model,
            "train": {k: v for k, v in self.train.items() if k not in ("epochs", "patience")},
            "policies": self.policies,
            "rows": self.rows,
            "aggregation": self.aggregation,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a TOML config.

    Raises:
        ConfigError: one line naming the problem: unreadable TOML, an unknown table or key, a
            wrong type, an unknown policy or optimizer, a missing data file.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "x.csv").write_text("1,0\\n2,1\\n")
        >>> _ = (d / "c.toml").write_text('[data]\\npath = "x.csv"\\n[trian]\\n')
        >>> load_config(d / "c.toml")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        labelgrad.app.train.ConfigError: c.toml: unknown table [trian] (expected: data, model, ...)
    """
    file = Path(path)
    name = file.name
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config {file}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{name}: invalid TOML: {err}") from None
    tables = ("data", "model", "train", "policies", "rows", "aggregation")
    for key in raw:
        if key not in tables:
            raise ConfigError(f"{name}: unknown table [{key}] (expected: {', '.join(tables)})")
    if "data" not in raw:
        raise ConfigError(f"{name}: the [data] table is required")
    data = _table(raw, "data", name)
    model = _table(raw, "model", name)
    train = _table(raw, "train", name)
    rows = _table(raw, "rows", name) if "rows" in raw else None
    aggregation = _table(raw, "aggregation", name) if "aggregation" in raw else None

    _check_data(data, file.parent, name)
    _check_model_and_train(model, train, name)
    policies = _policies(raw.get("policies", []), name)
    if rows is not None:
        _check_rows(rows, name)
    if aggregation is not None:
        _check_aggregation(aggregation, name)
    return TrainConfig(file, data, model, train, policies, rows, aggregation)


def _check_data(data: dict[str, Any], base: Path, name: str) -> None:
    """Resolve the data paths (relative to the config) and check the [data] values."""
    for key in ("path", "labels"):
        if data[key] is not None:
            p = (base / data[key]).resolve()
            if not p.is_file():
                raise ConfigError(f"{name}: [data] {key}: file not found: {p}")
            data[key] = str(p)
    fmt = data["format"] or _infer_format(Path(data["path"]))
    if fmt not in ("csv", "npz", "idx"):
        raise ConfigError(f"{name}: [data] format must be csv, npz or idx, got {fmt!r}")
    data["format"] = fmt
    if fmt == "idx" and data["labels"] is None:
        raise ConfigError(f"{name}: [data] labels (the labels idx file) is required for idx data")
    if data["label_columns"] is not None:
        if fmt != "csv":
            raise ConfigError(f"{name}: [data] label_columns applies to csv data only")
        _check_list(f"{name}: [data] label_columns", data["label_columns"], (int,))
        if not data["label_columns"]:
            raise ConfigError(f"{name}: [data] label_columns must not be empty")
    if data["task"] not in (None, "multiclass", "multilabel"):
        raise ConfigError(f"{name}: [data] task must be multiclass or multilabel")
    if data["num_classes"] is not None and data["num_classes"] < 1:
        raise ConfigError(f"{name}: [data] num_classes must be >= 1")
    if not 0 < data["test_fraction"] < 1:
        raise ConfigError(f"{name}: [data] test_fraction must be in (0, 1)")
    if not 0 <= data["validation_fraction"] < 1 - data["test_fraction"]:
        raise ConfigError(
            f"{name}: [data] validation_fraction must be in [0, 1 - test_fraction) (0: none)"
        )


def _check_model_and_train(model: dict[str, Any], train: dict[str, Any], name: str) -> None:
    _check_list(f"{name}: [model] hidden", model["hidden"], (int,))
    if any(h < 1 for h in model["hidden"]):
        raise ConfigError(f"{name}: [model] hidden widths must be >= 1")
    for key in ("epochs", "batch_size"):
        if train[key] < 1:
            raise ConfigError(f"{name}: [train] {key} must be >= 1, got {train[key]}")
    if train["patience"] < 0:
        raise ConfigError(f"{name}: [train] patience must be >= 0 (0: no early stopping)")
    if not (train["lr"] > 0 and math.isfinite(train["lr"])):
        raise ConfigError(f"{name}: [train] lr must be a positive number, got {train['lr']}")
    for key in ("weight_decay", "momentum"):
        v = train[key]
        if not (math.isfinite(v) and v >= 0 and (key != "momentum" or v < 1)):
            expected = "a finite number in [0, 1)" if key == "momentum" else "a finite number >= 0"
            raise ConfigError(f"{name}: [train] {key} must be {expected}, got {v}")
    if train["optimizer"] not in _OPTIMIZERS:
        raise ConfigError(
            f"{name}: [train] optimizer must be one of {', '.join(_OPTIMIZERS)}, "
            f"got {train['optimizer']!r}"
        )


def _check_rows(rows: dict[str, Any], name: str) -> None:
    for key in ("frozen", "lr_scale"):
        if rows[key] is not None:
            _check_list(f"{name}: [rows] {key}", rows[key], (int,) if key == "frozen" else _NUM)
    if rows["lr_scale"] is not None and rows["lr_scale_power"] is not None:
        raise ConfigError(f"{name}: [rows] give lr_scale or lr_scale_power, not both")
    power = rows["lr_scale_power"]
    if power is not None and not math.isfinite(power):
        raise ConfigError(f"{name}: [rows] lr_scale_power must be a finite number")


ENGINES = ("auto", "exact", "representation")
"""The ``[aggregation] engine`` values ``train`` can run (``subset`` and ``sample_gramian`` need
arguments, or single-label data, that a config does not give)."""


def aggregator_names() -> list[str]:
    """The ``lg.aggregators`` classes a config may name (concrete aggregators)."""
    bases = (lg.aggregators.Aggregator, lg.aggregators.JacobianAggregator)
    out = []
    for n in lg.aggregators.__all__:
        obj = getattr(lg.aggregators, n)
        if isinstance(obj, type) and issubclass(obj, bases) and obj not in bases:
            out.append(n)
    return out


def _check_aggregation(aggregation: dict[str, Any], file: str) -> None:
    names = aggregator_names()
    if aggregation["aggregator"] not in names:
        raise ConfigError(
            f"{file}: [aggregation] aggregator {aggregation['aggregator']!r} is not an aggregator "
            f"(expected one of: {', '.join(names)})"
        )
    if aggregation["engine"] not in ENGINES:
        raise ConfigError(
            f"{file}: [aggregation] engine must be one of {', '.join(ENGINES)}, "
            f"got {aggregation['engine']!r}"
        )


def _infer_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last == ".csv":
        return "csv"
    if last == ".npz":
        return "npz"
    if "idx" in path.name or last.startswith((".idx", "-ubyte")):
        return "idx"
    raise ConfigError(f"[data] path {path.name}: cannot tell its format, set [data] format")


def _policies(raw: Any, file: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        raise ConfigError(f"{file}: policies must be an array of tables ([[policies]])")
    out = []
    for i, spec in enumerate(raw):
        where = f"{file}: [[policies]] #{i + 1}"
        name = spec.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where} needs a name (one of: {', '.join(POLICY_KEYS)})")
        if name not in POLICY_KEYS:
            raise ConfigError(
                f"{where}: unknown policy {name!r} (expected one of: {', '.join(POLICY_KEYS)})"
            )
        keys = POLICY_KEYS[name]
        for key, value in spec.items():
            if key == "name":
                continue
            if key not in keys:
                accepted = ", ".join(keys) or "no other keys"
                raise ConfigError(f"{where} ({name}): unknown key {key!r} (accepts: {accepted})")
            _check_type(f"{where} ({name}) {key}", value, keys[key])
            if isinstance(value, list):
                _check_list(f"{where} ({name}) {key}", value, (int,) if key == "classes" else _NUM)
        if name == "class_weights" and ("weights" in spec) == ("beta" in spec):
            raise ConfigError(f"{where} (class_weights): give exactly one of weights, beta")
        if name in ("clip_per_class", "clip_per_sample") and "max_norm" not in spec:
            raise ConfigError(f"{where} ({name}): max_norm is required")
        if name == "freeze_classes" and "classes" not in spec:
            raise ConfigError(f"{where} ({name}): classes is required")
        out.append(dict(spec))
    return out


# --- data -----------------------------------------------------------------------------------


MAX_UNUSED_CLASSES = 16
"""Without a declared ``num_classes``, C = max label + 1 may leave at most this many class ids
(or as many as there are distinct labels, if more) without a sample: beyond that a label is
far more likely a typo (1000000 in a 2-class file) than a class, and C would size the model."""


def _read_arrays(d: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The features (N, D) float64 and the raw labels of the configured data file(s)."""
    fmt = d["format"]
    if fmt == "csv":
        x, y = read_csv(d["path"], label_columns=d["label_columns"] or [-1])
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
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataError(f"{d['path']}: labels must be integers")
    if len(x) < 2:
        raise DataError(f"{d['path']}: needs at least 2 samples, has {len(x)}")
    return x, y


def _num_classes(y: np.ndarray, declared: int | None, path: str) -> int:
    """C of class-index labels: checked against ``declared``, or inferred when plausible."""
    if y.min(initial=0) < 0:
        row = int(np.argmin(y))
        raise DataError(f"{path}: data row {row + 1} has label {y[row]}; class labels are >= 0")
    top = int(np.argmax(y))
    if declared is not None:
        if y[top] >= declared:
            raise DataError(
                f"{path}: data row {top + 1} has label {y[top]}, out of range for "
                f"[data] num_classes = {declared} (labels 0..{declared - 1})"
            )
        return declared
    distinct = np.unique(y)
    c = int(y[top]) + 1
    if c - len(distinct) > max(MAX_UNUSED_CLASSES, len(distinct)):
        rest = distinct[:-1]
        raise DataError(
            f"{path}: data row {top + 1} has label {y[top]}, but the other labels are "
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
        return y, task, _num_classes(y, d["num_classes"], path)
    if y.ndim != 2:
        raise DataError(f"{path}: multilabel data needs label columns, got {y.shape}")
    c = y.shape[1]
    if d["num_classes"] is not None and d["num_classes"] != c:
        raise DataError(f"{path}: num_classes={d['num_classes']} but {c} label columns")
    bad = ~np.isin(y, (-1, 0, 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{path}: data row {row + 1}, label column {col + 1} is {y[row, col]}; multi-hot "
            "labels must be 0, 1 or -1 (unknown)"
        )
    return y, task, c


@dataclass(frozen=True)
class _Validation:
    """The validation split (carved from the training part; empty with validation_fraction 0)."""

    x: Tensor
    y: Tensor


def _load_data(cfg: TrainConfig, seed: int) -> tuple[Dataset, _Validation]:
    """Read, check and split the data: a seeded test split, then validation from the rest."""
    d = cfg.data
    x, raw = _read_arrays(d)
    y, task, c = _labels(raw, d)
    check_memory(cfg, x.shape[1], c)  # before anything is sized by C
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = min(len(x) - 1, max(1, round(d["test_fraction"] * len(x))))
    n_val = min(len(x) - n_test - 1, round(d["validation_fraction"] * len(x)))
    te, va, tr = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    xtr, xva, xte = x[tr], x[va], x[te]
    if d["standardize"]:
        mean, std = xtr.mean(axis=0), xtr.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        xtr, xva, xte = (xtr - mean) / std, (xva - mean) / std, (xte - mean) / std

    def t(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    data = Dataset(
        name=Path(d["path"]).name,
        x_train=t(xtr, torch.float32),
        y_train=t(y[tr], torch.long),
        x_test=t(xte, torch.float32),
        y_test=t(y[te], torch.long),
        class_names=_class_names(d, task, c),
        task=task,
        meta={"source": d["path"], "seed": seed},
    )
    return data, _Validation(t(xva, torch.float32), t(y[va], torch.long))


def _class_names(d: Mapping[str, Any], task: Task, c: int) -> tuple[str, ...]:
    """Multi-label CSV: the label columns' header names; otherwise the class indices."""
    if d["format"] == "csv" and task == "multilabel":
        names = csv_header(d["path"])
        cols = d["label_columns"] or [-1]
        if names is not None and len(cols) == c:
            return tuple(names[k] for k in cols)
    return tuple(str(k) for k in range(c))


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


def check_against_classes(cfg: TrainConfig, num_classes: int) -> None:
    """Per-class config values have one entry per class and class indices are in range.

    Raises:
        ConfigError: one line naming the table, the key and the expected length or range.
    """
    c, file = num_classes, cfg.file.name

    def in_range(where: str, classes: list[int]) -> None:
        bad = [k for k in classes if not 0 <= k < c]
        if bad:
            raise ConfigError(
                f"{file}: {where} has class {bad[0]}, out of range for {c} classes (0..{c - 1})"
            )

    def length(where: str, values: Any) -> None:
        if isinstance(values, list) and len(values) != c:
            raise ConfigError(
                f"{file}: {where} has {len(values)} entries, expected {c} (one per class)"
            )

    for i, spec in enumerate(cfg.policies):
        where = f"[[policies]] #{i + 1} ({spec['name']})"
        if spec["name"] == "freeze_classes":
            in_range(f"{where} classes", spec["classes"])
        for key in ("weights", "pos", "neg"):
            length(f"{where} {key}", spec.get(key))
    if cfg.rows is not None:
        if cfg.rows["frozen"] is not None:
            in_range("[rows] frozen", cfg.rows["frozen"])
        length("[rows] lr_scale", cfg.rows["lr_scale"])


# --- building the run -----------------------------------------------------------------------


def _build_policy(
    cfg: TrainConfig, data: Dataset, history: int
) -> tuple[lg.Policy, lg.GradMonitor]:
    c = data.num_classes
    built: list[lg.Policy] = []
    for spec in cfg.policies:
        name = spec["name"]
        try:
            if name == "mask_unknown":
                built.append(lg.mask_unknown())
            elif name == "class_weights":
                w = (
                    torch.tensor(spec["weights"], dtype=torch.float32)
                    if "weights" in spec
                    else effective_number_weights(data.train_counts(), float(spec["beta"]))
                )
                built.append(lg.class_weights(w))
            elif name == "pos_neg_weights":
                built.append(lg.pos_neg_weights(**_floats(spec, ("pos", "neg"))))
            elif name == "eqlv2":
                built.append(lg.eqlv2(c, **_floats(spec, ("gamma", "mu", "alpha"))))
            elif name == "clip_per_class":
                built.append(lg.clip_per_class(float(spec["max_norm"])))
            elif name == "clip_per_sample":
                built.append(lg.clip_per_sample(float(spec["max_norm"])))
            elif name == "freeze_classes":
                built.append(lg.freeze_classes(spec["classes"]))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{cfg.file.name}: [[policies]] {name}: {err}") from None
    mon = lg.monitor(num_classes=c, history=history)
    return lg.chain(*built, mon), mon


def _floats(spec: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        if k in spec:
            v = spec[k]
            out[k] = torch.tensor(v, dtype=torch.float32) if isinstance(v, list) else float(v)
    return out


def _build_optimizer(cfg: TrainConfig, model: MLP, data: Dataset) -> Any:
    t = cfg.train
    params = model.parameters()
    opt: Any
    if t["optimizer"] == "sgd":
        opt = torch.optim.SGD(
            params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"]
        )
    elif t["optimizer"] == "adamw":
        opt = torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
    else:
        opt = torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"])
    if cfg.rows is None:
        return opt
    r = cfg.rows
    kwargs: dict[str, Any] = {"skip_absent": r["skip_absent"]}
    if r["frozen"] is not None:
        kwargs["frozen"] = r["frozen"]
    if r["lr_scale"] is not None:
        kwargs["lr_scale"] = torch.tensor(r["lr_scale"], dtype=torch.float32)
    elif r["lr_scale_power"] is not None:
        kwargs["lr_scale"] = tail_lr_scale(data.train_counts(), float(r["lr_scale_power"]))
    try:
        return lg.RowRules(opt, rows=model.head, **kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{cfg.file.name}: [rows]: {err}") from None


def _build_aggregator(cfg: TrainConfig, data: Dataset) -> Any:
    if cfg.aggregation is None:
        return None
    name = cfg.file.name
    if data.task != "multilabel":
        raise ConfigError(f"{name}: [aggregation] needs multilabel data (one loss per label)")
    try:
        return getattr(lg.aggregators, cfg.aggregation["aggregator"])()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: [aggregation] {cfg.aggregation['aggregator']}: {err}") from None


# --- the run --------------------------------------------------------------------------------


@dataclass
class _Parts:
    """The objects of one training run, built from the config."""

    model: MLP
    policy: lg.Policy
    monitor: lg.GradMonitor
    optimizer: Any
    aggregator: Any
    rows: bool
    engine: str = "auto"


def _build(cfg: TrainConfig, data: Dataset, seed: int, dev: torch.device) -> _Parts:
    torch.manual_seed(seed)
    model = MLP(data.x_train.shape[1], cfg.model["hidden"], data.num_classes).to(dev)
    policy, mon = _build_policy(cfg, data, history=MONITOR_HISTORY)
    policy.to(dev)
    opt = _build_optimizer(cfg, model, data)
    engine = cfg.aggregation["engine"] if cfg.aggregation is not None else "auto"
    aggregator = _build_aggregator(cfg, data)
    return _Parts(model, policy, mon, opt, aggregator, cfg.rows is not None, engine)


def _make_step(parts: _Parts, multilabel: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """One optimizer step on a batch; returns the batch's loss (no host sync)."""
    model, policy, opt, aggregator = parts.model, parts.policy, parts.optimizer, parts.aggregator
    engine: Any = parts.engine

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        feats = model.features(xb)
        logits = policy(model.head(feats), yb)
        loss: Tensor
        if multilabel:
            # Mean BCE over the known entries: unknown (-1) labels contribute nothing, with or
            # without aggregation (the K losses sum to the plain loss).
            losses = lg.per_label_losses(logits, yb, loss="bce")
            if aggregator is not None:
                extra: dict[str, Any] = {}
                if parts.engine == "representation":
                    extra = {"features": feats, "head": model.head}
                lg.aggregate_backward(
                    losses, model.trunk.parameters(), aggregator, engine=engine, **extra
                )
                loss = losses.detach().sum()
            else:
                loss = losses.sum()
                loss.backward()
        else:
            loss = F.cross_entropy(logits, yb)
            loss.backward()
        if parts.rows and multilabel:
            # Multi-hot labels of a C-label head: say so, never let the shape decide.
            opt.observe(yb, encoding="multi_hot")
            opt.step()
        elif parts.rows:
            opt.step(targets=yb)
        else:
            opt.step()
        return loss.detach()

    return step


def data_identity(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Path, size and SHA-256 of each data file: a checkpoint resumes only on the same data."""
    out = []
    for key in ("path", "labels"):
        if cfg.data[key] is None:
            continue
        path = Path(cfg.data[key])
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out.append({"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()})
    return out


def _resume(ckpt_path: Path, run: _RunId, parts: _Parts, dev: torch.device, echo: Any) -> _History:
    """Restore the run from ``ckpt_path``; returns its history (empty without a checkpoint)."""
    if not ckpt_path.exists():
        if echo is not None:
            echo(f"no checkpoint at {ckpt_path}: starting from epoch 0")
        return _History()
    try:
        state = torch.load(ckpt_path, map_location=dev, weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{ckpt_path}: cannot load checkpoint ({first})") from None
    _check_identity(state, ckpt_path, run)
    history = _check_progress(state, ckpt_path, run)
    _load_states(state, ckpt_path, parts)
    return history


@dataclass(frozen=True)
class _RunId:
    """What a checkpoint must match to resume: config, seed, data, and the run's shape."""

    cfg: TrainConfig
    seed: int
    data: list[dict[str, Any]]
    steps_per_epoch: int


def _check_identity(state: Any, path: Path, run: _RunId) -> None:
    if not isinstance(state, dict) or not set(CHECKPOINT_KEYS) & set(state):
        raise DataError(f"{path}: not a labelgrad checkpoint (no labelgrad train keys)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise DataError(
            f"{path}: checkpoint version {state.get('version')!r}; this labelgrad reads version "
            f"{CHECKPOINT_VERSION} (start again without --resume)"
        )
    missing = [k for k in (*CHECKPOINT_KEYS, *_CHECKPOINT_REST) if k not in state]
    if missing:
        raise DataError(f"{path}: not a labelgrad checkpoint (missing {', '.join(missing)})")
    if state["seed"] != run.seed or type(state["seed"]) is not int:
        raise ConfigError(
            f"{path} was written with --seed {state['seed']!r}, this run has --seed {run.seed} "
            "(another seed draws another train/test split: test data would leak into training)"
        )
    if state["data"] != run.data:
        was = state["data"][0] if isinstance(state["data"], list) and state["data"] else {}
        now = run.data[0]
        raise ConfigError(
            f"{path} was written for other data ({was.get('path')}, {was.get('size')} bytes, "
            f"sha256 {str(was.get('sha256'))[:12]}); this run reads {now['path']}, "
            f"{now['size']} bytes, sha256 {now['sha256'][:12]}"
        )
    if state["fingerprint"] != run.cfg.fingerprint():
        raise ConfigError(
            f"{path} was written for a different config (only [train] epochs may change)"
        )


def _check_progress(state: dict[str, Any], path: Path, run: _RunId) -> _History:
    epoch, losses, epochs = state["epoch"], state["losses"], run.cfg.train["epochs"]
    if type(epoch) is not int or not 0 <= epoch <= epochs:
        raise DataError(
            f"{path}: epoch must be an integer in 0..{epochs} ([train] epochs), got {epoch!r}"
        )
    ok = (
        isinstance(losses, list)
        and len(losses) == epoch
        and all(
            isinstance(e, list)
            and len(e) == run.steps_per_epoch
            and all(isinstance(v, float) and math.isfinite(v) for v in e)
            for e in losses
        )
    )
    if not ok:
        raise DataError(
            f"{path}: losses must be {epoch} lists of {run.steps_per_epoch} finite floats "
            "(one per step of each epoch done)"
        )
    val = state["validation"]
    ok = isinstance(val, dict) and all(
        isinstance(val.get(k), list)
        and len(val[k]) == epoch
        and all(isinstance(v, float) for v in val[k])
        for k in ("val_loss", "val_metric")
    )
    if not ok:
        raise DataError(
            f"{path}: validation must hold val_loss and val_metric, {epoch} floats each"
        )
    return _History([list(e) for e in losses], list(val["val_loss"]), list(val["val_metric"]))


def _load_states(state: dict[str, Any], path: Path, parts: _Parts) -> None:
    for key, obj in (
        ("model", parts.model),
        ("optimizer", parts.optimizer),
        ("policy", parts.policy),
    ):
        saved = state[key]
        if not isinstance(saved, dict):
            raise DataError(f"{path}: {key} must be a state dict, got {type(saved).__name__}")
        problem = _mismatch(obj.state_dict(), saved, key)
        if problem is None:
            try:
                obj.load_state_dict(saved)
            except Exception as err:
                problem = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        if problem is not None:
            raise DataError(f"{path}: {key} state does not fit this run: {problem}")
    _check_optimizer_state(parts, path)


def _mismatch(fresh: Any, saved: Any, where: str) -> str | None:
    """The first place where ``saved`` differs in type or tensor shape from ``fresh``, or None.

    Only the structure the fresh object already has is compared (an optimizer's per-parameter
    state appears after its first step and is checked by :func:`_check_optimizer_state`).
    """
    if isinstance(fresh, Tensor):
        if not isinstance(saved, Tensor):
            return f"{where} must be a tensor, got {type(saved).__name__}"
        if saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            return (
                f"{where} is {saved.dtype} {tuple(saved.shape)}, expected {fresh.dtype} "
                f"{tuple(fresh.shape)}"
            )
        return None
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            return f"{where} must be a dict, got {type(saved).__name__}"
        for k, v in fresh.items():
            if k == "state" and where == "optimizer":
                continue
            if k not in saved:
                return f"{where}.{k} is missing"
            found = _mismatch(v, saved[k], f"{where}.{k}")
            if found:
                return found
        return None
    if isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            return f"{where} must have {len(fresh)} entries"
        for i, (a, b) in enumerate(zip(fresh, saved)):
            found = _mismatch(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    numbers = isinstance(fresh, (int, float)) and isinstance(saved, (int, float))
    if fresh is not None and saved is not None and type(fresh) is not type(saved) and not numbers:
        return f"{where} must be {type(fresh).__name__}, got {saved!r}"
    return None


def _check_optimizer_state(parts: _Parts, path: Path) -> None:
    """Every loaded per-parameter state tensor is a scalar or shaped like its parameter."""
    opt = parts.optimizer
    inner = getattr(opt, "optimizer", opt)
    for group in inner.param_groups:
        for p in group["params"]:
            for k, v in inner.state.get(p, {}).items():
                if isinstance(v, Tensor) and v.numel() != 1 and v.shape != p.shape:
                    raise DataError(
                        f"{path}: optimizer state {k!r} is {tuple(v.shape)}, expected "
                        f"{tuple(p.shape)} (its parameter's shape)"
                    )


VAL_METRIC = {"multiclass": "balanced_accuracy", "multilabel": "macro_f1"}
"""The validation (and headline test) metric of each task."""


@dataclass
class _History:
    """Per-step training losses and per-epoch validation loss and metric (NaN: no validation)."""

    losses: list[list[float]] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    stopped_early: bool = False

    def epoch_loss(self) -> list[float]:
        """The mean training loss of each epoch."""
        return [sum(e) / len(e) for e in self.losses]

    def stalled(self, patience: int) -> bool:
        """No validation improvement in the last ``patience`` epochs (patience 0: never)."""
        v = [m for m in self.val_metric if not math.isnan(m)]
        return patience > 0 and len(v) > patience and max(v[-patience:]) <= max(v[:-patience])

    def still_rising(self) -> bool:
        """The last epoch set a new best validation metric (more epochs would likely help)."""
        v = [m for m in self.val_metric if not math.isnan(m)]
        return len(v) > 1 and v[-1] > max(v[:-1])

    def as_dict(self) -> dict[str, Any]:
        """For the checkpoint (and metrics.json)."""
        return {"val_loss": self.val_loss, "val_metric": self.val_metric}


def _validate(model: MLP, val: _Validation, task: Task, dev: torch.device) -> tuple[float, float]:
    """(loss, metric) of the plain model on the validation split; NaN without one."""
    if len(val.y) == 0:
        return math.nan, math.nan
    with torch.no_grad():
        logits = model(val.x.to(dev)).cpu()
    if task == "multiclass":
        loss = F.cross_entropy(logits, val.y)
        metrics, _ = multiclass_metrics(logits, val.y, logits.shape[1])
    else:
        loss = lg.per_label_losses(logits, val.y, loss="bce").sum()
        metrics, _ = multilabel_metrics(torch.sigmoid(logits), val.y)
    return float(loss), metrics[VAL_METRIC[task]]


def _train_epochs(
    run: _RunId,
    parts: _Parts,
    data: Dataset,
    val: _Validation,
    dev: torch.device,
    history: _History,
    ckpt_path: Path | None,
    bar: Any,
) -> None:
    """Train to the configured epochs (or an early stop), checkpointing after each epoch."""
    seed, t = run.seed, run.cfg.train
    x, y = data.x_train.to(dev), data.y_train.to(dev)
    step = _make_step(parts, data.task == "multilabel")
    for epoch in range(len(history.losses), t["epochs"]):
        if history.stalled(t["patience"]):
            history.stopped_early = True
            break
        losses_t = []
        for idx in epoch_batches(len(x), t["batch_size"], seed=seed, epoch=epoch):
            losses_t.append(step(x[idx], y[idx]))
            bar.update()
        epoch_losses = torch.stack(losses_t).tolist()  # one host sync per epoch
        if not all(math.isfinite(v) for v in epoch_losses):
            raise FloatingPointError(f"non-finite training loss in epoch {epoch + 1}")
        history.losses.append(epoch_losses)
        val_loss, val_metric = _validate(parts.model, val, data.task, dev)
        history.val_loss.append(val_loss)
        history.val_metric.append(val_metric)
        bar.set_postfix_str(f"epoch {epoch + 1} loss {history.epoch_loss()[-1]:.4f}")
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, run, parts, history)


def run_train(
    config: str | Path,
    *,
    out: str | Path = "labelgrad-out",
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    quiet: bool = False,
    baseline: bool = False,
    echo: Callable[[str], None] | None = print,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train as ``config`` declares; write checkpoint, metrics and report into ``out``.

    Args:
        config: the TOML config.
        out: the output folder.
        seed: the seed of the data split, the initialisation and the batches.
        device: where to train.
        resume: continue from ``out/checkpoint.pt`` (same config, seed and data only).
        quiet: no progress bar.
        baseline: also train plain cross-entropy (BCE for multi-label data) with the same seed,
            model and optimizer, and report it beside the configured run.
        echo: where the summary lines go (None: nowhere).
        warn: where warnings go (default: stderr).

    Returns:
        A JSON-ready summary: per-epoch losses and validation metrics, per-step losses, test
        metrics (and the baseline's), notes and warnings, files.

    Raises:
        ConfigError: the config is invalid, or the checkpoint belongs to another config, seed
            or data.
        DataError: the data files or the checkpoint are corrupt, or labels out of range.
        OutputError: the disk is full (the previous checkpoint is kept).
        PermissionError: ``out`` cannot be written.
    """
    warn = warn or (lambda msg: print(f"labelgrad train: warning: {msg}", file=sys.stderr))
    cfg = load_config(config)
    folder = check_writable_dir(out)
    data, val = _load_data(cfg, seed)
    check_against_classes(cfg, data.num_classes)
    dev = torch.device(device)
    steps_per_epoch = math.ceil(len(data.x_train) / cfg.train["batch_size"])
    run = _RunId(cfg, seed, data_identity(cfg), steps_per_epoch)
    parts = _build(cfg, data, seed, dev)
    ckpt_path = folder / "checkpoint.pt"
    history = _resume(ckpt_path, run, parts, dev, echo) if resume else _History()
    start_epoch = len(history.losses)
    runs: list[_Job] = [("configured", run, parts, history, ckpt_path)]
    if baseline:
        plain = replace(cfg, policies=[], rows=None, aggregation=None)
        runs.append(
            ("baseline", replace(run, cfg=plain), _build(plain, data, seed, dev), _History(), None)
        )
    total = sum(cfg.train["epochs"] - len(h.losses) for _, _, _, h, _ in runs) * steps_per_epoch
    bar = progress_bar(total, quiet=quiet, desc="labelgrad train", unit="step")
    t0 = time.perf_counter()
    try:
        for _, r, p, h, ck in runs:
            _train_epochs(r, p, data, val, dev, h, ck, bar)
    finally:
        bar.close()
    summary = _summary(cfg, seed, start_epoch, data, dev, runs, time.perf_counter() - t0)
    for msg in summary["warnings"]:
        warn(msg)
    write_train_outputs(folder, cfg.file, data, parts.monitor, summary)
    if echo is not None:
        _echo_summary(echo, summary, folder)
    return summary


def _summary(
    cfg: TrainConfig,
    seed: int,
    start_epoch: int,
    data: Dataset,
    dev: torch.device,
    runs: list[_Job],
    seconds: float,
) -> dict[str, Any]:
    """metrics.json's content: the configured run at the top level, the baseline beside it."""
    out: dict[str, Any] = {
        "config": str(cfg.file),
        "seed": seed,
        "epochs": cfg.train["epochs"],
        "resumed_from_epoch": start_epoch,
        "val_metric_name": VAL_METRIC[data.task],
        "train_samples": len(data.x_train),
        "test_samples": len(data.x_test),
        "notes": _notes(cfg, data),
        "train_seconds": seconds,
    }
    warnings: list[str] = []
    for name, _, parts, history, _ in runs:
        metrics, per_class = _evaluate(parts.model, data, dev)
        result = {
            "epoch_loss": history.epoch_loss(),
            "step_losses": history.losses,
            **history.as_dict(),
            "epochs_trained": len(history.losses),
            "stopped_early": history.stopped_early,
            "test": metrics,
            "per_class": per_class,
        }
        if name == "configured":
            out.update(result)
            out["confusion"] = _confusion(parts.model, data, dev)
        else:
            out["baseline"] = result
        if history.still_rising() and not history.stopped_early:
            v = [m for m in history.val_metric if not math.isnan(m)]
            warnings.append(
                f"{name} run: validation {VAL_METRIC[data.task]} was still rising at the last "
                f"epoch ({max(v[:-1]):.3f} -> {v[-1]:.3f}); more [train] epochs would likely help"
            )
    out["warnings"] = warnings
    return out


_Job = tuple[str, "_RunId", "_Parts", "_History", "Path | None"]
"""One training job of run_train: (name, run identity, parts, history, checkpoint path)."""


def _notes(cfg: TrainConfig, data: Dataset) -> list[str]:
    notes = []
    if any(p["name"] == "mask_unknown" for p in cfg.policies):
        notes.append(
            "[[policies]] mask_unknown changes nothing in `labelgrad train`: its loss already "
            "ignores unknown (-1) labels (mean BCE over the known entries); it matters where a "
            "loss treats -1 as a target"
        )
    if data.task == "multilabel" and bool((data.y_train < 0).any()):
        frac = float((data.y_train < 0).double().mean())
        notes.append(f"{frac:.0%} of the training labels are unknown (-1) and left out of the loss")
    return notes


def _confusion(model: MLP, data: Dataset, dev: torch.device) -> list[list[int]] | None:
    """Single-label: the test confusion matrix (rows: true class, columns: predicted)."""
    if data.task != "multiclass":
        return None
    with torch.no_grad():
        pred = model(data.x_test.to(dev)).argmax(dim=1).cpu()
    c = data.num_classes
    counts = torch.bincount(data.y_test * c + pred, minlength=c * c)
    return counts.reshape(c, c).tolist()


def _echo_summary(echo: Callable[[str], None], summary: dict[str, Any], folder: Path) -> None:
    def line(name: str, r: dict[str, Any]) -> str:
        return (
            f"{name}: {r['epochs_trained']} epochs, final loss {r['epoch_loss'][-1]:.4f}; "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["test"].items())
        )

    echo(line(f"trained (from epoch {summary['resumed_from_epoch']})", summary))
    if "baseline" in summary:
        echo(line("baseline (plain loss, same seed)", summary["baseline"]))
    for note in summary["notes"]:
        echo(f"note: {note}")
    echo(f"wrote {folder / 'report.html'}")


class OutputError(RuntimeError):
    """An output file could not be written (a full disk); the command exits 2."""


def _save_checkpoint(path: Path, run: _RunId, parts: _Parts, history: _History) -> None:
    epoch = len(history.losses)
    state = {
        "version": CHECKPOINT_VERSION,
        "fingerprint": run.cfg.fingerprint(),
        "seed": run.seed,
        "data": run.data,
        "epoch": epoch,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "policy": parts.policy.state_dict(),
        "losses": history.losses,
        "validation": history.as_dict(),
    }
    buf = io.BytesIO()
    torch.save(state, buf)  # serialised in memory: a write error below is a plain OSError
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "nothing written"
        raise OutputError(
            f"cannot write {path}: no space left on {_device_of(path)} ({kept})"
        ) from None


def _device_of(path: Path) -> str:
    """The mount point holding ``path`` (where space ran out)."""
    p = path.resolve().parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return f"the device of {p}"


def _evaluate(model: MLP, data: Dataset, dev: torch.device) -> tuple[dict[str, float], list[float]]:
    """Test metrics (:mod:`labelgrad.app.metrics`) and the per-class recall / per-label F1."""
    with torch.no_grad():
        logits = model(data.x_test.to(dev)).cpu()
    if data.task == "multiclass":
        metrics, recall = multiclass_metrics(logits, data.y_test, data.num_classes)
        return metrics, recall.tolist()
    metrics, per_label = multilabel_metrics(torch.sigmoid(logits), data.y_test)
    return metrics, per_label.tolist()
