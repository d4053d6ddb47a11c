"""``labelgrad train`` on hostile and careless input: exit code 2 and one line on stderr naming the
cause, never a silent wrong run, never an allocation sized by an unchecked value (issue 15).

Each case runs the command's ``main`` (the exit code and stderr a user sees) in this process, with
the warnings a fresh interpreter would print on its stderr; the cases that need a memory cap, and
one plain refusal, run the real command in a subprocess."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

SRC = Path(__file__).resolve().parents[2] / "src"


def _subprocess(
    args: list[str], cwd: Path, *, memory_cap: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh interpreter (optionally under an address-space cap)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    code = "import sys\n"
    if memory_cap is not None:
        code += (
            "import resource\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({memory_cap}, {memory_cap}))\n"
        )
    code += "from labelgrad.app.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args, "--quiet", "--threads", "1"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command's ``main`` in this process: its exit code, stdout and stderr, where stderr
    also gets the warnings a fresh interpreter would print (Python's default filters), so that
    the one-line checks stay as strict as in a subprocess. The working directory, torch's thread
    count and its random state are restored afterwards."""
    from labelgrad.app.cli import main

    argv = [*args, "--quiet", "--threads", "1"]
    out, err = io.StringIO(), io.StringIO()
    threads, rng, here = torch.get_num_threads(), torch.random.get_rng_state(), Path.cwd()
    try:
        os.chdir(cwd)
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in (
                DeprecationWarning,
                PendingDeprecationWarning,
                ImportWarning,
                ResourceWarning,
            ):
                warnings.filterwarnings("ignore", category=category)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
    shown = "".join(
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught
    )
    return subprocess.CompletedProcess(argv, code, out.getvalue(), shown + err.getvalue())


def _assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line
    assert proc.stderr.startswith("labelgrad train: error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _csv(tmp_path: Path, n: int = 60, classes: int = 2, name: str = "d.csv") -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, 3)) + y[:, None]
    path = tmp_path / name
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", fmt="%.6g", header="a,b,c,label")
    return path


def _toml(tmp_path: Path, body: str, data: str = "d.csv", name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[data]\npath = "{data}"\n' + textwrap.dedent(body))
    return path


BASE = """
[model]
hidden = [8]
[train]
epochs = 2
batch_size = 16
"""


# --- config and flags ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (BASE + "weight_decay = -0.1\n", ["[train] weight_decay must be a finite number >= 0"]),
        (BASE + 'optimizer = "sgd"\nmomentum = nan\n', ["[train] momentum must be a finite"]),
        (
            BASE + '[[policies]]\nname = "class_weights"\nweights = [1.0, 2.0, 3.0]\n',
            ["(class_weights) weights has 3 entries, expected 2 (one per class)"],
        ),
        (
            BASE + '[[policies]]\nname = "freeze_classes"\nclasses = [5]\n',
            ["(freeze_classes) classes has class 5, out of range for 2 classes"],
        ),
        (BASE + "[rows]\nfrozen = [-1]\n", ["[rows] frozen has class -1, out of range"]),
        (BASE + "[rows]\nlr_scale = [1.0]\n", ["[rows] lr_scale has 1 entries, expected 2"]),
    ],
)
def test_bad_config_values_are_refused(tmp_path: Path, body: str, needles: list[str]) -> None:
    _csv(tmp_path)
    _assert_refused(_run(["train", str(_toml(tmp_path, body))], tmp_path), *needles)
    assert not (tmp_path / "labelgrad-out" / "train" / "checkpoint.pt").exists()


def _multilabel_npz(tmp_path: Path, k: int = 4) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((80, k)) < 0.4).astype(np.int64)
    np.savez(tmp_path / "m.npz", x=rng.normal(size=(80, 5)) + y @ rng.normal(size=(k, 5)), y=y)


@pytest.mark.parametrize(
    ("table", "needles"),
    [
        ('aggregator = "UPGrad"\nengine = "warp"', ["engine must be one of auto, exact"]),
        ('aggregator = "conflicts"', ["'conflicts' is not an aggregator (expected one of: "]),
        ('aggregator = "Aggregator"', ["'Aggregator' is not an aggregator", "UPGrad"]),
    ],
)
def test_bad_aggregation_is_refused(tmp_path: Path, table: str, needles: list[str]) -> None:
    _multilabel_npz(tmp_path)
    cfg = _toml(tmp_path, BASE + "[aggregation]\n" + table + "\n", data="m.npz")
    _assert_refused(_run(["train", str(cfg)], tmp_path), *needles)


def test_negative_seed_is_refused(tmp_path: Path) -> None:
    _csv(tmp_path)
    cfg = _toml(tmp_path, BASE)
    # A real process: the exit status and stderr as a shell sees them.
    _assert_refused(
        _subprocess(["train", str(cfg), "--seed", "-1"], tmp_path), "--seed must be >= 0"
    )


# --- data ------------------------------------------------------------------------------------


def _npz_case(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    path = tmp_path / "m.npz"
    if kind == "complex":
        np.savez(path, x=rng.normal(size=(20, 3)) + 1j, y=y)
    elif kind == "no_columns":
        np.savez(path, x=np.zeros((20, 0)), y=y)
    elif kind == "zero_d":
        np.savez(path, x=np.array(3.0), y=y)
    else:  # corrupt: a truncated archive
        np.savez(path, x=rng.normal(size=(20, 3)), y=y)
        path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    ("kind", "needles"),
    [
        ("complex", ["m.npz: array 'x' is complex"]),
        ("no_columns", ["m.npz: array 'x' has no feature columns"]),
        ("zero_d", ["m.npz: array 'x' is 0-d"]),
        ("corrupt", ["m.npz: cannot read npz"]),
    ],
)
def test_bad_npz_is_refused(tmp_path: Path, kind: str, needles: list[str]) -> None:
    _npz_case(tmp_path, kind)
    _assert_refused(_run(["train", str(_toml(tmp_path, BASE, data="m.npz"))], tmp_path), *needles)


def _label_typo(tmp_path: Path) -> Path:
    path = _csv(tmp_path)
    lines = path.read_text().splitlines()
    cells = lines[8].split(",")
    lines[8] = ",".join([*cells[:-1], "1000000"])  # data row 8: line 9, after the header
    path.write_text("\n".join(lines) + "\n")
    return _toml(tmp_path, BASE)


def _huge_classes(tmp_path: Path) -> Path:
    _csv(tmp_path)
    return _toml(tmp_path, BASE.replace("[model]", "num_classes = 100000000000\n[model]"))


def _huge_hidden(tmp_path: Path) -> Path:
    _csv(tmp_path)
    return _toml(tmp_path, BASE.replace("hidden = [8]", "hidden = [100000000000]"))


CAP = 3 * 1024**3
"""An address-space cap for the child: torch imports within it, a 1e6-class model would not."""


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (_label_typo, ["d.csv: line 9 has label 1000000", "a typo?", "num_classes"]),
        (_huge_classes, ["would need about", "of memory;", "is available"]),
        (_huge_hidden, ["hidden = [100000000000]", "would need about"]),
    ],
)
def test_one_bad_value_never_allocates_under_a_memory_cap(
    tmp_path: Path, make: Callable[[Path], Path], needles: list[str]
) -> None:
    cfg = make(tmp_path)
    _assert_refused(_subprocess(["train", str(cfg)], tmp_path, memory_cap=CAP), *needles)


def test_the_memory_cap_leaves_room_for_a_real_run(tmp_path: Path) -> None:
    _csv(tmp_path)
    proc = _subprocess(["train", str(_toml(tmp_path, BASE))], tmp_path, memory_cap=CAP)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_declared_num_classes_reports_the_offending_row(tmp_path: Path) -> None:
    _label_typo(tmp_path)
    cfg = _toml(tmp_path, BASE.replace("[model]", "num_classes = 2\n[model]"))
    _assert_refused(
        _run(["train", str(cfg)], tmp_path),
        "line 9 has label 1000000, out of range for [data] num_classes = 2",
    )


# --- checkpoints -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run with [rows] (trained in-process once: only resumes are tested)."""
    from labelgrad.app.cli import main

    folder = tmp_path_factory.mktemp("trained")
    _csv(folder)
    body = BASE + "[rows]\nfrozen = [1]\nlr_scale = [1.0, 2.0]\n"
    one = _toml(folder, body.replace("epochs = 2", "epochs = 1"), name="one.toml")
    _toml(folder, body)
    out = folder / "labelgrad-out" / "train"
    assert main(["train", str(one), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    return folder


@pytest.fixture
def trained(trained_once: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the 1-epoch run, and the config that asks for 2 epochs on resume."""
    shutil.copytree(trained_once, tmp_path, dirs_exist_ok=True)
    ckpt = tmp_path / "labelgrad-out" / "train" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["data"][0]["path"] = str((tmp_path / "d.csv").resolve())  # the copy's data file
    torch.save(state, ckpt)
    return tmp_path / "c.toml", ckpt


def test_resume_with_another_seed_is_refused(trained: tuple[Path, Path]) -> None:
    cfg, ckpt = trained
    proc = _run(["train", str(cfg), "--resume", "--seed", "1"], ckpt.parents[2])
    _assert_refused(proc, "was written with --seed 0, this run has --seed 1")


def test_resume_on_other_data_is_refused(trained: tuple[Path, Path]) -> None:
    cfg, ckpt = trained
    data = ckpt.parents[2] / "d.csv"
    data.write_text(data.read_text().replace("\n", "\n", 1) + "0.1,0.2,0.3,1\n")
    proc = _run(["train", str(cfg), "--resume"], ckpt.parents[2])
    _assert_refused(proc, "was written for other data", "sha256")


def _edit(ckpt: Path, change: Callable[[dict[str, object]], None]) -> None:
    state = torch.load(ckpt, weights_only=True)
    change(state)
    torch.save(state, ckpt)


def _set(key: str, value: object) -> Callable[[dict[str, object]], None]:
    def change(state: dict[str, object]) -> None:
        state[key] = value

    return change


def _rows(key: str, value: torch.Tensor) -> Callable[[dict[str, object]], None]:
    def change(state: dict[str, object]) -> None:
        opt = state["optimizer"]
        assert isinstance(opt, dict)
        opt["row_rules"][key] = value

    return change


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (_set("epoch", -5), ["epoch must be an integer in 0..2", "-5"]),
        (_set("epoch", 1.0), ["epoch must be an integer"]),
        (_set("losses", [[0.5]]), ["losses must be 1 lists of"]),
        (_rows("frozen", torch.ones(5, dtype=torch.bool)), ["optimizer", "frozen", "(5,)"]),
        (_rows("lr_scale", torch.ones(1, dtype=torch.float64)), ["lr_scale", "(1,)"]),
        (_rows("lr_scale", torch.ones(2, dtype=torch.float32)), ["lr_scale", "float32"]),
        (_set("model", [1, 2]), ["model must be a state dict"]),
        (_set("seed", "0"), ["was written with --seed '0'"]),
    ],
)
def test_every_checkpoint_field_is_validated(
    trained: tuple[Path, Path], change: Callable[[dict[str, object]], None], needles: list[str]
) -> None:
    cfg, ckpt = trained
    _edit(ckpt, change)
    _assert_refused(_run(["train", str(cfg), "--resume"], ckpt.parents[2]), *needles)


def test_a_foreign_checkpoint_is_not_a_labelgrad_checkpoint(trained: tuple[Path, Path]) -> None:
    cfg, ckpt = trained
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    _assert_refused(
        _run(["train", str(cfg), "--resume"], ckpt.parents[2]), "not a labelgrad checkpoint"
    )


def test_a_full_disk_keeps_the_old_checkpoint(
    trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from labelgrad.app import train_checkpoint
    from labelgrad.app.cli import main

    cfg, ckpt = trained
    before = ckpt.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_checkpoint.os, "fsync", full)
    monkeypatch.chdir(ckpt.parents[2])
    code = main(["train", str(cfg), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert "no space left on" in err
    assert "the checkpoint of epoch 1 is kept" in err
    assert ckpt.read_bytes() == before
    assert not list(ckpt.parent.glob(".*.tmp"))


# --- [rows] on multi-label data --------------------------------------------------------------


def test_rows_on_multilabel_data_with_as_many_columns_as_classes(tmp_path: Path) -> None:
    # K == C: the integer (N, 4) labels of a 4-label head could be read as 4 class indices per
    # sample; the command knows they are multi-hot and says so (the frozen row must not move).
    _multilabel_npz(tmp_path, k=4)
    cfg = _toml(tmp_path, BASE + "[rows]\nfrozen = [2]\n", data="m.npz")
    proc = _run(["train", str(cfg)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = torch.load(tmp_path / "labelgrad-out" / "train" / "checkpoint.pt", weights_only=True)
    from labelgrad.app.training import MLP

    torch.manual_seed(0)
    init = MLP(5, [8], 4).state_dict()
    assert torch.equal(state["model"]["head.weight"][2], init["head.weight"][2])
    assert not torch.equal(state["model"]["head.weight"][0], init["head.weight"][0])
