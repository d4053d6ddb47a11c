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
    num_classes = 10            # default: max label + 1 (multiclass) / label columns
    test_fraction = 0.2         # seeded split (seed = --seed)
    standardize = true          # z-score features with training statistics

    [model]
    hidden = [128]              # hidden layer widths of the MLP

    [train]
    epochs = 10
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
    aggregator = "UPGrad"
    engine = "auto"

Outputs in ``--out`` (each written atomically: a temporary file renamed into place):
``checkpoint.pt`` after every epoch (``torch.save``; loaded with ``weights_only=True``),
``metrics.json``, ``monitor.csv`` / ``monitor.json`` (per-class gradient statistics),
``grad_norm.png``, ``per_class.png`` and ``report.html``. ``--resume`` continues from the
checkpoint exactly as an uninterrupted run would (the batches of each epoch are a function of the
seed and the epoch; model, optimizer and policy state are restored).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import labelgrad as lg
from labelgrad.app.datasets import DataError, Dataset, Task, read_csv, read_idx, read_npz
from labelgrad.app.html import Section, write_report
from labelgrad.app.plots import plot_grad_norm_history, plot_per_class_accuracy
from labelgrad.app.training import (
    MLP,
    effective_number_weights,
    epoch_batches,
    per_class_recall,
    progress_bar,
)
from labelgrad.report import atomic_path, atomic_write_text, check_writable_dir, save_monitor

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = ["POLICY_KEYS", "ConfigError", "TrainConfig", "load_config", "run_train"]

CHECKPOINT_VERSION = 1
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
        "standardize": ((bool,), True),
    },
    "model": {"hidden": ((list,), [128])},
    "train": {
        "epochs": ((int,), 10),
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
        """A hash of everything but the epoch count: a checkpoint only resumes the same run."""
        payload = {
            "data": self.data,
            "model": self.model,
            "train": {k: v for k, v in self.train.items() if k != "epochs"},
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

    base = file.parent
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
    _check_list(f"{name}: [model] hidden", model["hidden"], (int,))
    if any(h < 1 for h in model["hidden"]):
        raise ConfigError(f"{name}: [model] hidden widths must be >= 1")
    for key in ("epochs", "batch_size"):
        if train[key] < 1:
            raise ConfigError(f"{name}: [train] {key} must be >= 1, got {train[key]}")
    if not (train["lr"] > 0 and math.isfinite(train["lr"])):
        raise ConfigError(f"{name}: [train] lr must be a positive number, got {train['lr']}")
    if train["optimizer"] not in _OPTIMIZERS:
        raise ConfigError(
            f"{name}: [train] optimizer must be one of {', '.join(_OPTIMIZERS)}, "
            f"got {train['optimizer']!r}"
        )
    policies = _policies(raw.get("policies", []), name)
    if rows is not None:
        for key in ("frozen", "lr_scale"):
            if rows[key] is not None:
                _check_list(f"{name}: [rows] {key}", rows[key], (int,) if key == "frozen" else _NUM)
        if rows["lr_scale"] is not None and rows["lr_scale_power"] is not None:
            raise ConfigError(f"{name}: [rows] give lr_scale or lr_scale_power, not both")
    return TrainConfig(file, data, model, train, policies, rows, aggregation)


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


def _load_data(cfg: TrainConfig, seed: int) -> Dataset:
    d = cfg.data
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
    task: Task = d["task"] or ("multiclass" if y.ndim == 1 else "multilabel")
    if y.dtype.kind == "f" and not (y == np.round(y)).all():
        raise DataError(f"{d['path']}: labels must be integers")
    y = y.astype(np.int64)
    if task == "multiclass":
        if y.ndim != 1:
            raise DataError(f"{d['path']}: multiclass data needs one label column, got {y.shape}")
        c = d["num_classes"] or int(y.max(initial=0)) + 1
        if len(y) and (y.min() < 0 or y.max() >= c):
            raise DataError(
                f"{d['path']}: labels out of range: found {y.min()}..{y.max()}, "
                f"expected 0..{c - 1} (num_classes={c})"
            )
    else:
        if y.ndim != 2:
            raise DataError(f"{d['path']}: multilabel data needs label columns, got {y.shape}")
        c = y.shape[1]
        if d["num_classes"] is not None and d["num_classes"] != c:
            raise DataError(f"{d['path']}: num_classes={d['num_classes']} but {c} label columns")
        if not np.isin(y, (-1, 0, 1)).all():
            raise DataError(f"{d['path']}: multi-hot labels must be 0, 1 or -1 (unknown)")
    if len(x) < 2:
        raise DataError(f"{d['path']}: needs at least 2 samples, has {len(x)}")
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = min(len(x) - 1, max(1, round(d["test_fraction"] * len(x))))
    te, tr = perm[:n_test], perm[n_test:]
    xtr, xte = x[tr], x[te]
    if d["standardize"]:
        mean, std = xtr.mean(axis=0), xtr.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        xtr, xte = (xtr - mean) / std, (xte - mean) / std

    def t(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    return Dataset(
        name=Path(d["path"]).name,
        x_train=t(xtr, torch.float32),
        y_train=t(y[tr], torch.long),
        x_test=t(xte, torch.float32),
        y_test=t(y[te], torch.long),
        class_names=tuple(str(k) for k in range(c)),
        task=task,
        meta={"source": d["path"], "seed": seed},
    )


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
        counts = data.train_counts().clamp(min=1).double()
        kwargs["lr_scale"] = ((counts.max() / counts) ** float(r["lr_scale_power"])).float()
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
    cls = getattr(lg.aggregators, cfg.aggregation["aggregator"], None)
    if cls is None or not callable(cls):
        raise ConfigError(
            f"{name}: [aggregation] unknown aggregator {cfg.aggregation['aggregator']!r}"
        )
    return cls()


# --- the run --------------------------------------------------------------------------------


def run_train(
    config: str | Path,
    *,
    out: str | Path = "labelgrad-out",
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train as ``config`` declares; write checkpoint, metrics and report into ``out``.

    Returns:
        A JSON-ready summary: per-epoch mean losses, per-step losses, test metrics, files.

    Raises:
        ConfigError: the config is invalid, or the checkpoint belongs to another config.
        DataError: the data files are corrupt or their labels out of range.
        PermissionError: ``out`` cannot be written.
    """
    cfg = load_config(config)
    folder = check_writable_dir(out)
    data = _load_data(cfg, seed)
    dev = torch.device(device)
    t = cfg.train
    steps_per_epoch = math.ceil(len(data.x_train) / t["batch_size"])
    torch.manual_seed(seed)
    model = MLP(data.x_train.shape[1], cfg.model["hidden"], data.num_classes).to(dev)
    policy, mon = _build_policy(cfg, data, history=MONITOR_HISTORY)
    policy.to(dev)
    opt = _build_optimizer(cfg, model, data)
    aggregator = _build_aggregator(cfg, data)
    uses_rows = cfg.rows is not None

    ckpt_path = folder / "checkpoint.pt"
    start_epoch = 0
    step_losses: list[list[float]] = []
    if resume and not ckpt_path.exists() and echo is not None:
        echo(f"no checkpoint at {ckpt_path}: starting from epoch 0")
    if resume and ckpt_path.exists():
        try:
            state = torch.load(ckpt_path, map_location=dev, weights_only=True)
        except Exception as err:
            raise DataError(f"{ckpt_path}: cannot load checkpoint ({err})") from None
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            raise DataError(f"{ckpt_path}: not a labelgrad train checkpoint")
        if state["fingerprint"] != cfg.fingerprint():
            raise ConfigError(
                f"{ckpt_path} was written for a different config (only [train] epochs may change)"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        policy.load_state_dict(state["policy"])
        start_epoch = int(state["epoch"])
        step_losses = [list(map(float, e)) for e in state["losses"]]
        if start_epoch > t["epochs"]:
            raise ConfigError(
                f"checkpoint is at epoch {start_epoch}, beyond [train] epochs = {t['epochs']}"
            )

    x, y = data.x_train.to(dev), data.y_train.to(dev)
    multilabel = data.task == "multilabel"

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
                lg.aggregate_backward(
                    losses, shared=model.trunk.parameters(), aggregator=aggregator
                )
                loss = losses.detach().sum()
            else:
                loss = losses.sum()
                loss.backward()
        else:
            loss = F.cross_entropy(logits, yb)
            loss.backward()
        if uses_rows:
            opt.step(targets=yb)
        else:
            opt.step()
        return loss.detach()

    bar = progress_bar(
        t["epochs"] * steps_per_epoch,
        quiet=quiet,
        desc="labelgrad train",
        unit="step",
        initial=start_epoch * steps_per_epoch,
    )
    t0 = time.perf_counter()
    try:
        for epoch in range(start_epoch, t["epochs"]):
            losses_t = []
            for idx in epoch_batches(len(x), t["batch_size"], seed=seed, epoch=epoch):
                losses_t.append(step(x[idx], y[idx]))
                bar.update()
            epoch_losses = torch.stack(losses_t).tolist()  # one host sync per epoch
            if not all(math.isfinite(v) for v in epoch_losses):
                raise FloatingPointError(f"non-finite training loss in epoch {epoch + 1}")
            step_losses.append(epoch_losses)
            bar.set_postfix_str(
                f"epoch {epoch + 1} loss {sum(epoch_losses) / len(epoch_losses):.4f}"
            )
            _save_checkpoint(ckpt_path, cfg, epoch + 1, model, opt, policy, step_losses)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    metrics, per_class = _evaluate(model, data, dev)
    summary: dict[str, Any] = {
        "config": str(cfg.file),
        "seed": seed,
        "epochs": t["epochs"],
        "resumed_from_epoch": start_epoch,
        "epoch_loss": [sum(e) / len(e) for e in step_losses],
        "step_losses": step_losses,
        "test": metrics,
        "per_class": per_class,
        "train_seconds": seconds,
    }
    names = list(data.class_names)
    files = ["checkpoint.pt"]
    for fname in ("monitor.csv", "monitor.history.csv", "monitor.json"):
        save_monitor(mon, folder / fname, names)
        files.append(fname)
    history = mon.recent_norms().tolist()
    if history:
        plot_grad_norm_history(
            history, names, folder / "grad_norm.png", title="per-class ‖dL/dlogit‖ per step"
        )
        files.append("grad_norm.png")
    metric_name = "accuracy" if data.task == "multiclass" else "F1"
    plot_per_class_accuracy(
        {metric_name: [0.0 if math.isnan(v) else v for v in per_class]},
        names,
        folder / "per_class.png",
        counts=data.train_counts().tolist(),
        title=f"per-class test {metric_name}",
        ylabel=f"test {metric_name}",
    )
    files.append("per_class.png")
    summary["files"] = [*files, "metrics.json", "report.html"]
    atomic_write_text(folder / "metrics.json", json.dumps(summary, indent=1) + "\n")
    write_report(
        folder / "report.html",
        f"labelgrad train: {cfg.file.name}",
        [
            Section(
                "Test metrics",
                [f"{len(data.x_train)} training and {len(data.x_test)} test samples."],
                ["metric", "value"],
                [[k, f"{v:.4f}"] for k, v in metrics.items()],
            ),
            Section("Per-class test metric", images=["per_class.png"]),
            Section("Per-class gradient norm", images=[f for f in files if f == "grad_norm.png"]),
        ],
    )
    if echo is not None:
        echo(
            f"trained {t['epochs']} epochs (from epoch {start_epoch}), final loss "
            f"{summary['epoch_loss'][-1]:.4f}; "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )
        echo(f"wrote {folder / 'report.html'}")
    return summary


def _save_checkpoint(
    path: Path,
    cfg: TrainConfig,
    epoch: int,
    model: MLP,
    opt: Any,
    policy: lg.Policy,
    losses: list[list[float]],
) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "fingerprint": cfg.fingerprint(),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "policy": policy.state_dict(),
        "losses": losses,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _evaluate(model: MLP, data: Dataset, dev: torch.device) -> tuple[dict[str, float], list[float]]:
    with torch.no_grad():
        logits = model(data.x_test.to(dev)).cpu()
    if data.task == "multiclass":
        recall = per_class_recall(logits.argmax(dim=1), data.y_test, data.num_classes)
        acc = float((logits.argmax(dim=1) == data.y_test).double().mean())
        return {"accuracy": acc, "balanced_accuracy": float(recall.nanmean())}, recall.tolist()
    pred = logits > 0
    known = data.y_test >= 0
    pos = data.y_test == 1
    tp = (pred & pos).sum(0).double()
    fp = (pred & ~pos & known).sum(0).double()
    fn = (~pred & pos).sum(0).double()
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), 0.0)
    micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1))
    return {"macro_f1": float(f1.mean()), "micro_f1": micro}, f1.tolist()
