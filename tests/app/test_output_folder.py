"""One output-folder guard for every command (issue 20 class 7, issue 23 item 7): every ``--out``
that cannot take the run is refused with one line and exit 2 before any work, a folder holding
another run needs ``--force`` (or ``--resume``), and a new run never leaves an earlier run's
files next to its own."""

from __future__ import annotations

import errno
import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from labelgrad.app.cli import build_parser, main
from labelgrad.app.outputs import DEFAULT_OUT, MANIFEST


def _train_data(folder: Path, task: str = "multiclass") -> Path:
    rng = np.random.default_rng(0)
    n = 40
    if task == "multiclass":
        y = (np.arange(n) % 3)[:, None]
        header = "a,b,label"
        label_columns = "[-1]"
    else:
        y = (rng.random((n, 3)) < 0.5).astype(int)
        header = "a,b,l0,l1,l2"
        label_columns = "[2, 3, 4]"
    x = rng.normal(size=(n, 2)) + y[:, :1]
    np.savetxt(
        folder / f"{task}.csv",
        np.column_stack([x, y]),
        delimiter=",",
        fmt="%.5g",
        header=header,
        comments="",
    )
    cfg = folder / f"{task}.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            [data]
            path = "{task}.csv"
            label_columns = {label_columns}
            [model]
            hidden = [4]
            [train]
            epochs = 1
            batch_size = 16
            """
        )
    )
    return cfg


# Each command with the arguments of its cheapest run, and the file name it writes.
COMMANDS: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "train": (lambda d: ["train", str(_train_data(d))], "report.html"),
    "demo": (lambda d: ["demo", "--size", "tiny"], "report.html"),
    "bench": (lambda d: ["bench", "--only", "policies", "--quick"], "bench.json"),
    "outcomes": (lambda d: ["bench", "--outcomes", "--outcomes-size", "tiny"], "results.md"),
}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    code = main([*argv, "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _empty(d: Path) -> tuple[str, list[str]]:
    return "", ["--out must name a folder"]


def _a_file(d: Path) -> tuple[str, list[str]]:
    (d / "taken").write_text("mine")
    return str(d / "taken"), ["is a file"]


def _under_a_file(d: Path) -> tuple[str, list[str]]:
    (d / "taken").write_text("mine")
    return str(d / "taken" / "sub"), ["cannot write to output folder"]


def _file_name_is_a_folder(name: str) -> Callable[[Path], tuple[str, list[str]]]:
    def make(d: Path) -> tuple[str, list[str]]:
        (d / "out" / name).mkdir(parents=True)
        return str(d / "out"), [f"{name} is a folder there"]

    return make


def _another_run(d: Path) -> tuple[str, list[str]]:
    out = d / "out"
    out.mkdir()
    (out / "old.png").write_text("x")
    manifest = {"command": "other", "identity": "x", "state": "finished", "files": ["old.png"]}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return str(out), ["holds a finished `labelgrad other` run", "--force"]


def _files_without_manifest(name: str) -> Callable[[Path], tuple[str, list[str]]]:
    def make(d: Path) -> tuple[str, list[str]]:
        (d / "out").mkdir()
        (d / "out" / name).write_text("an earlier run")
        return str(d / "out"), [f"already holds {name}", "--force"]

    return make


def _read_only(d: Path) -> tuple[str, list[str]]:
    (d / "ro").mkdir()
    (d / "ro").chmod(0o500)
    return str(d / "ro"), ["cannot write to output folder", "Permission denied"]


def _deny_writes_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root writes into read-only folders: make the write probe fail as it would for a user."""
    from labelgrad.report import _atomic

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_atomic.tempfile, "NamedTemporaryFile", denied)


CASES = {
    "empty": _empty,
    "a_file": _a_file,
    "under_a_file": _under_a_file,
    "another_run": _another_run,
    "read_only": _read_only,
}


@pytest.mark.parametrize("case", [*CASES, "name_is_a_folder", "files_without_manifest"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_bad_out_is_refused_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    case: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    args, name = COMMANDS[command]
    make = {
        **CASES,
        "name_is_a_folder": _file_name_is_a_folder(name),
        "files_without_manifest": _files_without_manifest(name),
    }[case]
    out, needles = make(tmp_path)
    if case == "read_only" and os.geteuid() == 0:
        _deny_writes_as_root(monkeypatch)
    argv = [*args(tmp_path), "--out", out]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    _refused(argv, capsys, "--out", *needles)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written or removed
    assert not (tmp_path / "labelgrad-out").exists()


def test_each_command_has_its_own_default_folder() -> None:
    parser = build_parser()
    defaults = {
        c: parser.parse_args([c] + (["c.toml"] if c == "train" else [])).out
        for c in ("demo", "train")
    }
    assert defaults == {"demo": "labelgrad-out/demo", "train": "labelgrad-out/train"}
    assert defaults == DEFAULT_OUT


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _manifest(folder: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((folder / MANIFEST).read_text())
    return data


def test_a_forced_run_removes_every_file_of_the_run_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    single, multi = _train_data(tmp_path, "multiclass"), _train_data(tmp_path, "multilabel")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    assert main(["train", str(single), "--out", str(out), "--quiet"]) == 0
    assert "confusion.png" in _files(out)
    # Another config into the same folder: refused, then replaced with --force.
    _refused(["train", str(multi), "--out", str(out)], capsys, "holds a finished", "--force")
    assert main(["train", str(multi), "--out", str(out), "--quiet", "--force"]) == 0
    manifest = _manifest(out)
    assert manifest["command"] == "train" and manifest["state"] == "finished"
    files = manifest["files"]
    assert isinstance(files, list)
    assert "confusion.png" not in _files(out)  # the single-label run's figure is gone
    assert _files(out) == {*files, MANIFEST, "notes.txt"}
    report = (out / "report.html").read_text()
    listed = report[report.index(">Files<") :]
    for name in ("checkpoint.pt", "metrics.json", "monitor.csv", "per_class.png"):
        assert f"<li>{name}</li>" in listed
    assert "confusion.png" not in report
    # The same run again (same config, seed and data) may replace itself.
    assert main(["train", str(multi), "--out", str(out), "--quiet"]) == 0


def test_resume_needs_a_run_of_the_same_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    manifest = {"command": "demo", "identity": "x", "state": "finished", "files": ["results.json"]}
    (out / MANIFEST).write_text(json.dumps(manifest))
    cfg = _train_data(tmp_path)
    _refused(["train", str(cfg), "--out", str(out), "--resume"], capsys, "--resume continues train")


def test_a_refused_config_leaves_no_run_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The folder is claimed before the data is read: a run that stopped before writing anything
    # is not a run to protect.
    cfg = _train_data(tmp_path)
    (tmp_path / "multiclass.csv").write_text("a,b,label\n1,2,x\n")
    out = tmp_path / "out"
    _refused(["train", str(cfg), "--out", str(out)], capsys)
    _train_data(tmp_path)
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
