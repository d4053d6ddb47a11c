"""CSV files as spreadsheet programs and pandas write them (issue 20 class 8, issue 23 item 12):
every dialect reads the same features and classes, string labels become classes named as
written, header names select label columns, and names with ``$``, ``<``, ``&``, commas and quotes
reach the report verbatim (escaped in HTML, never mathtext in the figures)."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import numpy as np
import pytest

from labelgrad.app.cli import main
from labelgrad.app.datafiles import DataError, csv_data_lines, read_table
from labelgrad.app.train_config import load_config
from labelgrad.app.train_data import load_data

NAMES = ["$x$", "<b>&amp;", "a,b", 'say "hi"', "plain", "$\\bad{$"]
"""Class names that mean something to mathtext, HTML, CSV and the shell."""


def _samples(n_per_class: int = 8) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    labels = [name for name in NAMES for _ in range(n_per_class)]
    index = np.array([NAMES.index(v) for v in labels])
    x = np.round(rng.normal(size=(len(labels), 2)) + index[:, None], 4)
    return x, labels


def _write(path: Path, dialect: str) -> None:
    x, labels = _samples()
    buf = io.StringIO(newline="")
    if dialect == "pandas":
        # DataFrame.to_csv(): an unnamed index column; encoding="utf-8-sig" adds the BOM.
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["", "f1", "f2", "label"])
        for i, (row, label) in enumerate(zip(x, labels, strict=True)):
            w.writerow([i, *row, label])
        path.write_bytes(buf.getvalue().encode("utf-8-sig"))
        return
    if dialect == "semicolon":
        w = csv.writer(buf, dialect="excel", delimiter=";")
    else:
        w = csv.writer(buf, dialect=dialect)
    w.writerow(["f1", "f2", "label"])
    for row, label in zip(x, labels, strict=True):
        w.writerow([*row, label])
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")


DIALECTS = ["excel", "excel-tab", "unix", "semicolon", "pandas"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_dialect_reads_the_same_table(tmp_path: Path, dialect: str) -> None:
    path = tmp_path / "d.csv"
    _write(path, dialect)
    x, labels = _samples()
    table = read_table(path, label_columns=["label"])
    assert table.header == ["f1", "f2", "label"]
    np.testing.assert_array_equal(table.features, x)
    assert table.label_names == tuple(sorted(NAMES))
    assert [table.label_names[k] for k in table.labels[:, 0]] == labels
    assert table.lines[0] == 2  # the header is line 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_train_reports_the_class_names_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dialect: str
) -> None:
    _write(tmp_path / "d.csv", dialect)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[data]\npath = "d.csv"\nlabel_columns = ["label"]\n'
        "[model]\nhidden = [4]\n[train]\nepochs = 1\nbatch_size = 16\n"
    )
    code = main(["train", str(cfg), "--out", str(tmp_path / "out"), "--quiet", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"<td>{html.escape(name)}</td>" in report, name
    assert "<td>$x$</td>" in report  # verbatim: no mathtext, no markup
    monitor = json.loads((tmp_path / "out" / "monitor.json").read_text(encoding="utf-8"))
    assert [r["class"] for r in monitor["classes"]] == sorted(NAMES)


def test_numeric_data_with_a_semicolon_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b'"a";"b";"label"\r\n1.5;2;0\r\n3;4;1\r\n')
    table = read_table(path, label_columns=[-1])
    assert table.features.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    assert table.labels.tolist() == [[0], [1]] and table.label_names is None


def test_a_header_name_selects_multi_hot_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('x,"tag, one",$two$\n0.5,1,0\n1.5,0,1\n')
    table = read_table(path, label_columns=["tag, one", "$two$"])
    assert table.labels.tolist() == [[1, 0], [0, 1]]
    assert table.features.tolist() == [[0.5], [1.5]]


@pytest.mark.parametrize(
    ("text", "columns", "needles"),
    [
        (
            "a,b,label\n1,2,cat\n3,4,1\n",
            [-1],
            [
                "line 2, column 3 (label) has label 'cat'",
                "line 3 has '1'",
                "all numbers or all class names",
            ],
        ),
        (
            "a,b,label\n1,x,0\n3,4,1\n",
            [-1],
            ["line 2, column 2 (b) has a non-numeric cell 'x'", "label_columns"],
        ),
        ("a,b,l1,l2\n1,2,yes,no\n", [2, 3], ["column 3 (l1) has label 'yes'", "multi-hot"]),
        ("a,b,label\n1,2,0\n", ["class"], ["no column named 'class' (columns: a, b, label)"]),
        ("1,2,0\n3,4,1\n", ["label"], ["'label' is a name, but the file has no header"]),
    ],
)
def test_bad_labels_name_the_line_the_column_and_the_fix(
    tmp_path: Path, text: str, columns: list[int | str], needles: list[str]
) -> None:
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        read_table(path, label_columns=columns)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("value", "needle"), [('";;"', "[data] delimiter must be one character"), ('"\\""', "quote")]
)
def test_a_bad_delimiter_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, needle: str
) -> None:
    (tmp_path / "d.csv").write_text("a;b;label\n1;2;0\n3;4;1\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\npath = "d.csv"\ndelimiter = {value}\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_an_explicit_delimiter_is_used(tmp_path: Path) -> None:
    # A sniffer could take the comma of the decimal "1,5"; the declared delimiter decides.
    path = tmp_path / "d.csv"
    path.write_text("a|b|label\n1|2|0\n3|4|1\n")
    table = read_table(path, label_columns=[-1], delimiter="|")
    assert table.features.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(("header", "samples", "first"), [(None, 61, 1), (True, 60, 2)])
def test_a_header_of_numbers_only_is_data_unless_the_config_says_header(
    tmp_path: Path, header: bool | None, samples: int, first: int
) -> None:
    # Columns named 0, 1, 2, 3: nothing in the cells tells this header from a sample, so the
    # default reads it as one, and warns of a class of a single sample on line 1 (class 3, the
    # label column's name); `[data] header = true` settles it.
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    body = "\n".join(",".join([*(f"{v:.4f}" for v in rng.normal(size=3)), str(k)]) for k in y)
    (tmp_path / "d.csv").write_text("0,1,2,3\n" + body + "\n")
    key = "" if header is None else "header = true\n"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\npath = "{tmp_path / "d.csv"}"\n{key}[train]\nepochs = 1\n')
    data, _ = load_data(load_config(cfg), 0)
    single = "class 3 has a single sample (line 1): a typo?"
    assert data.num_classes == (4 if header is None else 3)
    assert (single in data.meta.get("warnings", [])) == (header is None)
    lines = csv_data_lines(tmp_path / "d.csv", header=header)
    assert len(lines) == samples and lines[0] == first
