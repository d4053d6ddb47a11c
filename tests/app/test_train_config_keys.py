"""Every ``labelgrad train`` config key, and the config against its data, checked before the
first step (issue 20, class 9): a wrong type or value of any key is exit 2 with one line naming
the key; the cases are generated from the config schema, so a new key is covered (or this test
fails until it gets a bad value)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from labelgrad.app.cli import main
from labelgrad.app.train_config import _SCHEMA, POLICY_KEYS

BASE = {
    "data": {"path": '"d.csv"'},
    "model": {"hidden": "[4]"},
    "train": {"epochs": "1", "batch_size": "16"},
}


def _write_data(folder: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = rng.normal(size=(60, 3)) + y[:, None]
    np.savetxt(
        folder / "d.csv",
        np.column_stack([x, y]),
        delimiter=",",
        fmt="%.5g",
        header="a,b,c,label",
        comments="",
    )
    ym = (rng.random((60, 2)) < 0.5).astype(int)
    np.savez(folder / "m.npz", x=x, y=ym)


def _config(folder: Path, tables: dict[str, dict[str, str]], extra: str = "") -> Path:
    text = ""
    for table, keys in tables.items():
        text += f"[{table}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
    path = folder / "c.toml"
    path.write_text(text + textwrap.dedent(extra))
    return path


def _refused(folder: Path, cfg: Path, capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    code = main(["train", str(cfg), "--out", str(folder / "out"), "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith("labelgrad train: error: "), err
    for needle in needles:
        assert needle in err, err
    assert not (folder / "out" / "checkpoint.pt").exists()  # refused before the first step
    return err


def _wrong_type(types: tuple[type, ...]) -> str:
    if str in types:
        return "5"
    if list in types:
        return '"x"'
    if bool in types:
        return "1"
    return '"x"'  # numbers


# A value of the right type but out of range (or otherwise wrong) for every key; None where the
# type is the whole contract (a bool).
BAD_VALUE: dict[tuple[str, str], str | None] = {
    ("data", "path"): '"missing.csv"',
    ("data", "format"): '"xls"',
    ("data", "labels"): '"missing.idx"',
    ("data", "label_columns"): "[]",
    ("data", "delimiter"): '";;"',
    ("data", "header"): None,
    ("data", "x_key"): '"nope"',
    ("data", "y_key"): '"nope"',
    ("data", "task"): '"both"',
    ("data", "num_classes"): "0",
    ("data", "test_fraction"): "1.5",
    ("data", "validation_fraction"): "0.95",
    ("data", "standardize"): None,
    ("model", "hidden"): "[0]",
    ("train", "epochs"): "0",
    ("train", "patience"): "-1",
    ("train", "lr"): "0",
    ("train", "batch_size"): "0",
    ("train", "optimizer"): '"adagrad"',
    ("train", "weight_decay"): "-1",
    ("train", "momentum"): "1.0",
    ("rows", "frozen"): "[99]",
    ("rows", "lr_scale"): "[1.0]",
    ("rows", "lr_scale_power"): "inf",
    ("rows", "skip_absent"): None,
    ("aggregation", "aggregator"): '"Nope"',
    ("aggregation", "engine"): '"warp"',
}
KEYS = [(t, k) for t, keys in _SCHEMA.items() for k in keys]


def test_every_key_has_a_bad_value() -> None:
    assert set(BAD_VALUE) == set(KEYS)


def _tables(table: str, key: str, value: str) -> dict[str, dict[str, str]]:
    tables = {t: dict(v) for t, v in BASE.items()}
    if key in ("x_key", "y_key") or table == "aggregation":
        tables["data"]["path"] = '"m.npz"'
    if table == "aggregation":
        tables["aggregation"] = {"aggregator": '"UPGrad"'}
    if key == "labels":
        tables["data"]["format"] = '"idx"'
    tables.setdefault(table, {})[key] = value
    return tables


@pytest.mark.parametrize(("table", "key"), KEYS)
def test_a_wrong_type_of_every_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, key: str
) -> None:
    _write_data(tmp_path)
    value = _wrong_type(_SCHEMA[table][key][0])
    _refused(tmp_path, _config(tmp_path, _tables(table, key, value)), capsys, f"[{table}] {key}")


@pytest.mark.parametrize(("table", "key"), [k for k in KEYS if BAD_VALUE.get(k) is not None])
def test_a_wrong_value_of_every_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, key: str
) -> None:
    _write_data(tmp_path)
    value = BAD_VALUE[(table, key)]
    assert value is not None
    _refused(tmp_path, _config(tmp_path, _tables(table, key, value)), capsys, f"[{table}] {key}")


@pytest.mark.parametrize(
    ("policy", "key"), [(p, k) for p, keys in POLICY_KEYS.items() for k in keys]
)
def test_a_wrong_type_of_every_policy_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str, key: str
) -> None:
    _write_data(tmp_path)
    value = _wrong_type(POLICY_KEYS[policy][key])
    extra = f'[[policies]]\nname = "{policy}"\n{key} = {value}\n'
    cfg = _config(tmp_path, BASE, extra)
    _refused(tmp_path, cfg, capsys, f"[[policies]] #1 ({policy}) {key}")


# --- the config against its data ---------------------------------------------------------------


def test_an_aggregator_that_needs_more_labels_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_data(tmp_path)
    cfg = _config(tmp_path, _tables("aggregation", "aggregator", '"Krum"'))
    _refused(tmp_path, cfg, capsys, "[aggregation] aggregator = 'Krum'", "K >= 3", "2 labels")


def test_an_engine_that_cannot_serve_the_aggregator_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_data(tmp_path)
    tables = _tables("aggregation", "aggregator", '"ConFIG"')
    tables["aggregation"]["engine"] = '"representation"'
    _refused(tmp_path, _config(tmp_path, tables), capsys, "'ConFIG'", "engine = 'representation'")


def test_patience_without_a_validation_split_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_data(tmp_path)
    tables = _tables("train", "patience", "2")
    tables["data"]["validation_fraction"] = "0"
    _refused(tmp_path, _config(tmp_path, tables), capsys, "[train] patience = 2 needs a validation")


def test_a_one_class_label_column_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_data(tmp_path)
    text = (tmp_path / "d.csv").read_text().splitlines()
    rows = [",".join([*r.split(",")[:-1], "0"]) for r in text[1:]]
    (tmp_path / "d.csv").write_text("\n".join([text[0], *rows]) + "\n")
    _refused(tmp_path, _config(tmp_path, BASE), capsys, "label_columns", "one class only")


def test_a_class_without_a_training_sample_is_a_warning_naming_class_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_data(tmp_path)
    text = (tmp_path / "d.csv").read_text().splitlines()
    # One row says 5 (a typo for 2?); declared num_classes = 6 makes it a valid label.
    from labelgrad.app.train_config import load_config
    from labelgrad.app.train_data import load_data

    tables = {t: dict(v) for t, v in BASE.items()}
    tables["data"]["num_classes"] = "6"
    cfg = _config(tmp_path, tables)
    # A typo in one row: the stratified split keeps a class of one sample in training, so the
    # warning names the class and the row as a single sample.
    row = len(text) // 2
    text[row] = ",".join([*text[row].split(",")[:-1], "5"])
    (tmp_path / "d.csv").write_text("\n".join(text) + "\n")
    data, _ = load_data(load_config(cfg), 0)
    assert int((data.y_train == 5).sum()) == 1
    code = main(["train", str(cfg), "--out", str(tmp_path / "out"), "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"class 5 has a single sample (line {row + 1}): a typo?" in err, err
    assert "2 of 6 classes have no sample at all (3, 4)" in err, err


@pytest.mark.parametrize(
    ("key", "value"),
    [("x_key", '"x"'), ("y_key", '"y"'), ("labels", '"d.csv"')],
)
def test_a_key_of_another_format_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str
) -> None:
    _write_data(tmp_path)
    tables = {t: dict(v) for t, v in BASE.items()}
    tables["data"][key] = value
    _refused(tmp_path, _config(tmp_path, tables), capsys, f"[data] {key} applies to")


def test_header_of_a_file_that_is_not_csv_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_data(tmp_path)
    tables = {t: dict(v) for t, v in BASE.items()}
    tables["data"].update(path='"m.npz"', header="true")
    _refused(tmp_path, _config(tmp_path, tables), capsys, "[data] header applies to csv data only")
