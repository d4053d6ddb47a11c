"""A hostile review of the ``labelgrad`` command (shared/HOSTILE.md, classes 3 to 6) by a reviewer
who did not write it: a new user's own files and configs. Every case ends in the correct run
(checked against an independent reference) or in exit 2 with one line naming the argument, key or
data value, before the first training step."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from labelgrad.app.cli import main
from labelgrad.app.train_config import load_config
from labelgrad.app.train_data import load_data, split_indices

BASE = """
[model]
hidden = [4]
[train]
epochs = 1
batch_size = 16
"""

RNG = np.random.default_rng(0)
N = 40
Y = np.arange(N) % 2
X = RNG.normal(size=(N, 3)) + Y[:, None]


def _config(folder: Path, data: str, body: str = BASE) -> Path:
    path = folder / "c.toml"
    path.write_text(textwrap.dedent(data) + textwrap.dedent(body))
    return path


def _refused(
    cfg: Path, capsys: pytest.CaptureFixture[str], *needles: str, args: tuple[str, ...] = ()
) -> None:
    out = cfg.parent / "out"
    code = main(["train", str(cfg), "--out", str(out), "--quiet", "--threads", "1", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith("labelgrad train: error: "), err
    for needle in needles:
        assert needle in err, err
    assert not (out / "checkpoint.pt").exists()  # refused before the first step


# --- class 6: the command's arguments -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        # torch's generators overflowed mid-run (exit 1, "Overflow when unpacking long long").
        (("--seed", str(2**63 - 1)), ["--seed must be >= 0", "2**32"]),
        (("--seed", str(2**64)), ["--seed must be >= 0", "2**32"]),
        # A device that holds no data failed at the first copy (exit 1, NotImplementedError).
        (("--device", "meta"), ["--device meta", "cannot hold tensors"]),
    ],
    ids=["seed-2**63-1", "seed-2**64", "device-meta"],
)
def test_a_bad_argument_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needles: list[str]
) -> None:
    np.savez(tmp_path / "d.npz", x=X, y=Y)
    _refused(_config(tmp_path, '[data]\npath = "d.npz"\n'), capsys, *needles, args=args)


# --- class 6: config values that would train nothing ----------------------------------------


@pytest.mark.parametrize(
    ("policy", "needles"),
    [
        ('name = "freeze_classes"\nclasses = [1, 0]', ["freeze_classes", "all 2 classes"]),
        ('name = "class_weights"\nweights = [0.0, 0]', ["class_weights", "all zero"]),
    ],
    ids=["freeze-every-class", "all-zero-weights"],
)
def test_a_policy_that_stops_all_learning_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str, needles: list[str]
) -> None:
    np.savez(tmp_path / "d.npz", x=X, y=Y)
    body = BASE + "[[policies]]\n" + policy + "\n"
    _refused(_config(tmp_path, '[data]\npath = "d.npz"\n', body), capsys, *needles)


# --- class 6: CSV dialects read as a new user writes them ------------------------------------


def _cells(values: np.ndarray) -> list[str]:
    return [f"{v:.4f}" for v in values]


def _dialect(kind: str) -> tuple[str, str]:
    """(file text, extra [data] lines) for one dialect holding X and Y."""
    if kind == "bom-crlf":
        rows = ["a,b,c,label", *(",".join([*_cells(x), str(y)]) for x, y in zip(X, Y, strict=True))]
        return "\ufeff" + "\r\n".join(rows) + "\r\n", ""
    if kind == "quoted-commas":
        head = '"a,1","b ""x""",c,"lab,el"'
        rows = [head, *(",".join([*_cells(x), str(y)]) for x, y in zip(X, Y, strict=True))]
        return "\n".join(rows) + "\n", 'label_columns = ["lab,el"]\n'
    if kind == "special-names":
        head = '$x$,"<b>&amp;",`rm -rf ~`,label'
        rows = [head, *(",".join([*_cells(x), str(y)]) for x, y in zip(X, Y, strict=True))]
        return "\n".join(rows) + "\n", ""
    if kind == "pandas-index":
        rows = [
            ",a,b,c,y",
            *(
                ",".join([str(i), *_cells(x), str(y)])
                for i, (x, y) in enumerate(zip(X, Y, strict=True))
            ),
        ]
        return "\n".join(rows) + "\n", 'label_columns = ["y"]\n'
    assert kind == "tab-label-first"
    rows = ["label\ta\tb\tc", *("\t".join([str(y), *_cells(x)]) for x, y in zip(X, Y, strict=True))]
    return "\n".join(rows) + "\n", "label_columns = [0]\n"


@pytest.mark.parametrize(
    "kind", ["bom-crlf", "quoted-commas", "special-names", "pandas-index", "tab-label-first"]
)
def test_every_dialect_gives_the_written_features_and_labels(tmp_path: Path, kind: str) -> None:
    text, extra = _dialect(kind)
    (tmp_path / "d.csv").write_text(text, newline="")
    cfg = load_config(_config(tmp_path, '[data]\npath = "d.csv"\nstandardize = false\n' + extra))
    data, val = load_data(cfg, 0)
    x = torch.cat([data.x_train, val.x, data.x_test]).double()
    y = torch.cat([data.y_train, val.y, data.y_test])
    order = torch.argsort(x[:, 0])
    ref = np.round(X, 4)
    ref_order = np.argsort(ref[:, 0])
    np.testing.assert_allclose(x[order].numpy(), ref[ref_order], rtol=1e-6)
    np.testing.assert_array_equal(y[order].numpy(), Y[ref_order])


def test_a_ragged_file_names_the_delimiter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unquoted ";" in a name of a ";" file: said only "no feature columns left".
    rows = [
        "x;a&amp;b;label",
        *(";".join([*_cells(x[:2]), str(y)]) for x, y in zip(X, Y, strict=True)),
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    _refused(_config(tmp_path, '[data]\npath = "d.csv"\n'), capsys, "[data] delimiter")


def test_a_label_name_held_by_two_columns_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Took the first "label" column (a feature) and failed on its values (" has label 0.64").
    rows = [
        "a,label,label",
        *(",".join([*_cells(x[:2]), str(y)]) for x, y in zip(X, Y, strict=True)),
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    cfg = _config(tmp_path, '[data]\npath = "d.csv"\nlabel_columns = ["label"]\n')
    _refused(cfg, capsys, "2 columns are named 'label'", "columns 2, 3", "by index")


# --- class 5: labels --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "needles"),
    [
        ("nan", ["line 41", "labels must be integers"]),
        ("5.5", ["line 41", "5.5", "labels must be integers"]),
        ("-3", ["line 41", "-3", ">= 0"]),
        ("inf", ["line 41", "labels must be integers"]),
        ("1e30", ["line 41", "2**53"]),
        ("99999999999", ["line 41", "a typo?", "num_classes"]),
        ("cat", ["line 41", "'cat'", "all numbers or all class names"]),
    ],
)
def test_a_bad_label_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], label: str, needles: list[str]
) -> None:
    labels = [*map(str, Y[:-1]), label]
    rows = ["a,b,c,label", *(",".join([*_cells(x), y]) for x, y in zip(X, labels, strict=True))]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    _refused(_config(tmp_path, '[data]\npath = "d.csv"\n'), capsys, *needles)


@pytest.mark.parametrize(
    ("fmt", "needles"),
    [
        # Said "label_columns = [-1] holds one class only (0)" for npz data and for names.
        ("npz", ["array 'y'", "one class only (0)"]),
        ("csv-names", ["label_columns = [-1]", "one class only ('cat')"]),
    ],
)
def test_one_class_is_named_as_the_user_wrote_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str, needles: list[str]
) -> None:
    if fmt == "npz":
        np.savez(tmp_path / "d.npz", x=X, y=np.zeros(N, dtype=int))
        cfg = _config(tmp_path, '[data]\npath = "d.npz"\n')
    else:
        rows = ["a,b,c,label", *(",".join([*_cells(x), "cat"]) for x in X)]
        (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
        cfg = _config(tmp_path, '[data]\npath = "d.csv"\n')
    _refused(cfg, capsys, *needles)


# --- class 3: magnitudes ---------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-300, 1e30, 1e300])
def test_standardized_features_do_not_depend_on_the_scale(tmp_path: Path, scale: float) -> None:
    # 1e300 overflowed the variance (x**2 = inf): every feature became 0, a silent wrong run.
    np.savez(tmp_path / "d.npz", x=X * scale, y=Y)
    data, val = load_data(load_config(_config(tmp_path, '[data]\npath = "d.npz"\n')), 0)
    # The run's own (stratified, seeded) split, with the default fractions.
    te, va, tr = split_indices(Y, 0.2, 0.1, 0)
    train = X[tr]
    ref = (X - train.mean(axis=0)) / train.std(axis=0)  # the unscaled features, float64
    np.testing.assert_allclose(data.x_train.numpy(), ref[tr], atol=1e-5)
    np.testing.assert_allclose(val.x.numpy(), ref[va], atol=1e-5)
    np.testing.assert_allclose(data.x_test.numpy(), ref[te], atol=1e-5)


@pytest.mark.parametrize(
    ("scale", "needles"),
    [
        # Infinite in float32: failed in the first epoch (exit 1, "non-finite training loss").
        (1e300, ["feature column 1", "float32", "standardize = true"]),
        # Zero in float32: every feature silently 0.
        (1e-300, ["feature column 1", "float32", "standardize = true"]),
    ],
)
def test_raw_features_outside_float32_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scale: float, needles: list[str]
) -> None:
    np.savez(tmp_path / "d.npz", x=X * scale, y=Y)
    cfg = _config(tmp_path, '[data]\npath = "d.npz"\nstandardize = false\n')
    _refused(cfg, capsys, *needles)


def test_a_constant_feature_column_trains(tmp_path: Path) -> None:
    x = np.column_stack([X, np.full(N, 7.0)])
    np.savez(tmp_path / "d.npz", x=x, y=Y)
    data, _ = load_data(load_config(_config(tmp_path, '[data]\npath = "d.npz"\n')), 0)
    assert torch.equal(data.x_train[:, 3], torch.zeros(len(data.x_train)))


# --- class 4: state -----------------------------------------------------------------------------


def _metrics(out: Path) -> dict[str, Any]:
    m = json.loads((out / "metrics.json").read_text())
    for key in ("train_seconds", "resumed_from_epoch"):
        m.pop(key, None)
    return m


def test_resume_with_patience_and_baseline_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    x = RNG.normal(size=(60, 3)) * 3 + (np.arange(60) % 3)[:, None]
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
    data = '[data]\npath = "d.npz"\nvalidation_fraction = 0.3\n'

    def body(epochs: int) -> str:
        return BASE.replace("epochs = 1", f"epochs = {epochs}") + (
            'patience = 1\nlr = 0.3\n[[policies]]\nname = "eqlv2"\n'
        )

    flags = ["--quiet", "--threads", "1", "--baseline"]
    assert (
        main(["train", str(_config(tmp_path, data, body(6))), "--out", str(tmp_path / "a"), *flags])
        == 0
    )
    assert (
        main(["train", str(_config(tmp_path, data, body(2))), "--out", str(tmp_path / "b"), *flags])
        == 0
    )
    cfg = _config(tmp_path, data, body(6))
    assert main(["train", str(cfg), "--out", str(tmp_path / "b"), "--resume", *flags]) == 0
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_declared_multilabel_column_is_one_label(tmp_path: Path) -> None:
    # An (N, 1) multi-hot array was squeezed to (N,), then refused as "got (40,)".
    y = (X[:, :1] > 0.5).astype(int)
    y[::7] = -1
    np.savez(tmp_path / "d.npz", x=X, y=y)
    cfg = _config(tmp_path, '[data]\npath = "d.npz"\ntask = "multilabel"\n')
    data, val = load_data(load_config(cfg), 0)
    assert data.task == "multilabel" and data.num_classes == 1
    got = torch.cat([data.y_train, val.y, data.y_test])
    assert got.shape == (N, 1)
    assert sorted(got[:, 0].tolist()) == sorted(y[:, 0].tolist())
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["per_class"]) == 1
