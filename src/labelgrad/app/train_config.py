"""The ``labelgrad train`` config: reading the TOML file and checking every key.

The keys are listed in :mod:`labelgrad.app.train`'s docstring (and docs/api/cli.md). Checks
that need the data (per-class lengths, class ranges) are :func:`check_against_classes`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import labelgrad as lg

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]


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
        "delimiter": ((str,), None),
        "header": ((bool,), None),
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
    "mask": {"keep": (list,)},
    "class_weights": {"weights": (list,), "beta": _NUM},
    "pos_neg_weights": {"pos": (*_NUM, list), "neg": (*_NUM, list)},
    "eqlv2": {"gamma": _NUM, "mu": _NUM, "alpha": _NUM},
    "eql": {"freq_threshold": _NUM},
    "logit_adjust": {"tau": _NUM},
    "seesaw": {"p": _NUM, "q": _NUM, "eps": _NUM},
    "ldam_drw": {"max_margin": _NUM, "s": _NUM, "drw_epoch": (int,), "beta": _NUM},
    "asymmetric_focus": {"gamma_pos": _NUM, "gamma_neg": _NUM, "clip": _NUM},
    "labels_trick": {"classes": (list,)},
    "clip_per_class": {"max_norm": _NUM},
    "clip_per_sample": {"max_norm": _NUM},
    "freeze_classes": {"classes": (list,)},
}
"""The policies a config may declare, with the keys each accepts besides ``name`` and
:data:`SCHEDULE_KEYS`. The class counts, priors and frequencies that ``logit_adjust``,
``seesaw``, ``ldam_drw`` and ``eql`` need come from the training data."""

SCHEDULE_KEYS: dict[str, tuple[type, ...]] = {"start_epoch": (int,), "end_epoch": (int,)}
"""Keys every [[policies]] entry accepts: apply it from epoch ``start_epoch`` (counted from 0)
until before ``end_epoch`` (``lg.schedule``, in steps of the run)."""

_REQUIRED_POLICY_KEYS = {
    "mask": "keep",
    "clip_per_class": "max_norm",
    "clip_per_sample": "max_norm",
    "freeze_classes": "classes",
    "eql": "freq_threshold",
}

_OPTIMIZERS = ("adam", "adamw", "sgd")

_LATER_KEYS = frozenset({"header"})
"""[data] keys added after checkpoints were first written (0.3): left out of the fingerprint
while unset, so that an earlier checkpoint of the same config resumes."""


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
    """A validated ``labelgrad train`` config (the keys: :mod:`labelgrad.app.train`)."""

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
            # Keys added later count only when set, so that a checkpoint written before they
            # existed still resumes under the same config.
            "data": {
                k: v
                for k, v in self.data.items()
                if k not in ("path", "labels") and not (k in _LATER_KEYS and v is None)
            },
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
        labelgrad.app.train_config.ConfigError: c.toml: unknown table [trian] (expected: data, ...)
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
    for key, fmt in (("x_key", "npz"), ("y_key", "npz"), ("labels", "idx")):
        # A key of another format would be ignored: say so rather than train on other arrays.
        if key in raw["data"] and data["format"] != fmt:
            raise ConfigError(f"{name}: [data] {key} applies to {fmt} data only")
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
        _check_list(f"{name}: [data] label_columns", data["label_columns"], (int, str))
        if not data["label_columns"]:
            raise ConfigError(f"{name}: [data] label_columns must not be empty")
    delimiter = data["delimiter"]
    if delimiter is not None:
        if fmt != "csv":
            raise ConfigError(f"{name}: [data] delimiter applies to csv data only")
        if len(delimiter) != 1 or delimiter in '"\r\n':
            raise ConfigError(
                f"{name}: [data] delimiter must be one character (not a quote or line break), "
                f'e.g. ";" or "\\t", got {delimiter!r}'
            )
    if data["header"] is not None and fmt != "csv":
        raise ConfigError(f"{name}: [data] header applies to csv data only")
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
    # Names as torch spells its classes (AdamW, SGD) are the same optimizers.
    if train["optimizer"].lower() not in _OPTIMIZERS:
        raise ConfigError(
            f"{name}: [train] optimizer must be one of {', '.join(_OPTIMIZERS)} (any case), "
            f"got {train['optimizer']!r}"
        )
    train["optimizer"] = train["optimizer"].lower()


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
    """The aggregator names a config may use: the registry ``lg.aggregators.available()``."""
    return list(lg.aggregators.available())


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
    out: list[dict[str, Any]] = []
    for i, spec in enumerate(raw):
        where = f"{file}: [[policies]] #{i + 1}"
        name = spec.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where} needs a name (one of: {', '.join(POLICY_KEYS)})")
        if name not in POLICY_KEYS:
            raise ConfigError(
                f"{where}: unknown policy {name!r} (expected one of: {', '.join(POLICY_KEYS)})"
            )
        keys = {**POLICY_KEYS[name], **SCHEDULE_KEYS}
        for key, value in spec.items():
            if key == "name":
                continue
            if key not in keys:
                accepted = ", ".join(keys)
                raise ConfigError(f"{where} ({name}): unknown key {key!r} (accepts: {accepted})")
            _check_type(f"{where} ({name}) {key}", value, keys[key])
            if isinstance(value, list):
                entry = {"classes": (int,), "keep": (bool,)}.get(key, _NUM)
                _check_list(f"{where} ({name}) {key}", value, entry)
            if key in (*SCHEDULE_KEYS, "drw_epoch") and value < 0:
                raise ConfigError(f"{where} ({name}) {key} must be >= 0, got {value}")
        if spec.get("end_epoch", math.inf) <= spec.get("start_epoch", 0):
            raise ConfigError(f"{where} ({name}): end_epoch must be > start_epoch")
        if name == "class_weights" and ("weights" in spec) == ("beta" in spec):
            raise ConfigError(f"{where} (class_weights): give exactly one of weights, beta")
        required = _REQUIRED_POLICY_KEYS.get(name)
        if required is not None and required not in spec:
            raise ConfigError(f"{where} ({name}): {required} is required")
        if name == "ldam_drw" and "beta" in spec and "drw_epoch" not in spec:
            raise ConfigError(f"{where} (ldam_drw): beta weights the DRW phase: give drw_epoch")
        out.append(dict(spec))
    return out


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
            if set(spec["classes"]) >= set(range(c)):
                raise ConfigError(
                    f"{file}: {where} classes freezes all {c} classes: nothing would train"
                )
        if spec["name"] == "class_weights" and "weights" in spec and not any(spec["weights"]):
            raise ConfigError(f"{file}: {where} weights are all zero: nothing would train")
        for key in ("weights", "pos", "neg", "keep"):
            length(f"{where} {key}", spec.get(key))
    if cfg.rows is not None:
        if cfg.rows["frozen"] is not None:
            in_range("[rows] frozen", cfg.rows["frozen"])
        length("[rows] lr_scale", cfg.rows["lr_scale"])
