"""Small things about the command that users ran into: ``python -m labelgrad``, the help texts,
optimizer names as torch spells them, the summary line of a fresh run, and data errors that name
a CSV line once (the file's line number) and the label value as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labelgrad.app.cli import main

pytest.importorskip("matplotlib")


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _csv(tmp_path: Path, lines: list[str]) -> None:
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")


def _config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[data]\npath = "d.csv"\n{extra}\n[model]\nhidden = [4]\n[train]\nepochs = 1\n'
        "batch_size = 8\n"
    )
    return cfg


def _train(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> tuple[int, str, str]:
    code = main(["train", *argv, "--quiet", "--threads", "1", "--out", str(tmp_path / "o")])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _good_rows(n: int = 40) -> list[str]:
    rng = np.random.default_rng(0)
    return [f"{rng.normal():.4f},{rng.normal():.4f},{i % 2}" for i in range(n)]


# --- python -m labelgrad ---------------------------------------------------------------------


def test_python_m_labelgrad_runs_the_command() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "labelgrad", *args], capture_output=True, text=True, check=False
        )

    import labelgrad

    version = run("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"labelgrad {labelgrad.__version__}"
    bad = run("bench", "--only", "nope")  # the command's own usage error: exit 2, its prog name
    assert bad.returncode == 2
    assert "labelgrad bench: error: argument --only" in bad.stderr


# --- help texts ------------------------------------------------------------------------------


def test_bench_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(["bench"], capsys)
    description = text.split("\n\n")[1]  # usage, then the description, then the options
    assert not description.startswith("options:"), text
    assert "plain training step" in description and "--outcomes" in description


def test_train_help_lists_every_config_key(capsys: pytest.CaptureFixture[str]) -> None:
    from labelgrad.app import train_config

    text = _help(["train"], capsys)
    keys = text.partition("config keys")[2]
    assert keys, text
    for table, schema in train_config._SCHEMA.items():
        assert f"[{table}]" in keys, table
        missing = [k for k in schema if f"{k} = " not in keys]
        assert not missing, (table, missing)
    assert "[[policies]]" in keys
    assert [p for p in train_config.POLICY_KEYS if p not in keys] == []


# --- optimizer names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [("AdamW", torch.optim.AdamW), ("SGD", torch.optim.SGD), ("Adam", torch.optim.Adam)],
)
def test_optimizer_names_are_case_insensitive(tmp_path: Path, name: str, cls: type) -> None:
    from labelgrad.app.datasets import Dataset
    from labelgrad.app.train_build import build_parts
    from labelgrad.app.train_config import load_config

    _csv(tmp_path, _good_rows())
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\npath = "d.csv"\n[train]\noptimizer = "{name}"\nlr = 0.01\n')
    config = load_config(cfg)
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    data = Dataset("d", x, y, x, y, ("0", "1"), "multiclass")
    parts = build_parts(config, data, 0, torch.device("cpu"))
    assert type(parts.optimizer) is cls
    assert parts.optimizer.param_groups[0]["lr"] == 0.01


def test_an_unknown_optimizer_is_still_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _csv(tmp_path, _good_rows())
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("epochs = 1", 'epochs = 1\noptimizer = "NAdam"'))
    code, _, err = _train([str(cfg)], capsys, tmp_path)
    assert code == 2
    assert "optimizer must be one of adam, adamw, sgd (any case), got 'NAdam'" in err


# --- the summary line ------------------------------------------------------------------------


def test_a_fresh_run_says_trained_and_a_resume_says_from_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _csv(tmp_path, _good_rows())
    cfg = _config(tmp_path)
    code, out, err = _train([str(cfg)], capsys, tmp_path)
    assert code == 0, err
    assert out.startswith("trained: 1 epochs,"), out
    assert "from epoch" not in out
    cfg.write_text(cfg.read_text().replace("epochs = 1", "epochs = 2"))
    code, out, err = _train([str(cfg), "--resume"], capsys, tmp_path)
    assert code == 0, err
    assert out.startswith("trained (resumed after epoch 1): 2 epochs,"), out


# --- CSV lines and label values --------------------------------------------------------------


def _refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str = "") -> str:
    code, _, err = _train([str(_config(tmp_path, extra))], capsys, tmp_path)
    assert code == 2, err
    assert err.count("\n") == 1, err
    return err


def test_a_csv_error_names_the_file_line_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A header, then a blank line: data row 5 is line 7 of the file.
    rows = _good_rows()
    rows[4] = rows[4].rsplit(",", 1)[0] + ",1000000"
    _csv(tmp_path, ["a,b,label", "", *rows])
    err = _refused(tmp_path, capsys)
    assert "d.csv: line 7 has label 1000000" in err
    assert "row" not in err.replace("rows", ""), err
    err = _refused(tmp_path, capsys, "num_classes = 2")
    assert "d.csv: line 7 has label 1000000, out of range" in err

    rows = _good_rows()
    rows[4] = "1,2"
    _csv(tmp_path, ["a,b,label", "", *rows])
    assert "d.csv: line 7 has 2 cells, expected 3" in _refused(tmp_path, capsys)


@pytest.mark.parametrize(("value", "shown"), [("1e300", "1e+300"), ("5.5", "5.5"), ("nan", "nan")])
def test_a_bad_csv_label_is_shown_as_written_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, shown: str
) -> None:
    rows = _good_rows()
    rows[1] = rows[1].rsplit(",", 1)[0] + "," + value
    _csv(tmp_path, rows)  # no header: data row 2 is line 2
    err = _refused(tmp_path, capsys)
    assert f"d.csv: line 2, column 3 has label {shown}; labels must be integers" in err
    assert "-9223372036854775808" not in err


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        (np.array([0.0, 1e300, 1.0, 0.0]), "sample 2 has label 1e+300"),
        (np.array([0.0, 1.0, 5.5, 0.0]), "sample 3 has label 5.5; labels must be integers"),
        (np.array([0, 1, 2**64 - 1, 0], dtype=np.uint64), f"sample 3 has label {2**64 - 1}"),
    ],
)
def test_a_bad_npz_label_is_shown_as_stored_with_its_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: np.ndarray, needle: str
) -> None:
    np.savez(tmp_path / "m.npz", x=np.arange(8.0).reshape(4, 2), y=labels)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\npath = "m.npz"\n[train]\nepochs = 1\n')
    code, _, err = _train([str(cfg)], capsys, tmp_path)
    assert code == 2, err
    assert needle in err, err


@pytest.mark.parametrize("header", ["", "a,b,label\n"])
def test_a_byte_order_mark_is_not_a_header(tmp_path: Path, header: str) -> None:
    from labelgrad.app.datafiles import csv_data_lines, csv_header, read_csv

    path = tmp_path / "d.csv"
    path.write_bytes(("\ufeff" + header + "1,2,0\n3,4,1\n").encode())
    x, y = read_csv(path, label_columns=[-1])
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and y.tolist() == [[0], [1]]
    assert csv_header(path) == (["a", "b", "label"] if header else None)
    assert csv_data_lines(path) == ([2, 3] if header else [1, 2])
