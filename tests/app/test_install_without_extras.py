"""A command checks what it needs before it starts: one message listing every missing module and
the one install line, never a failure after the work is done (issue 17).

The last test installs the built wheel, without extras, into a fresh virtual environment that
sees torch and numpy (and their dependencies) but none of the application's extras, and runs the
console script there."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

import pytest

from labelgrad.app.cli import INSTALL, main, missing_requirements

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = ("matplotlib", "sklearn", "river", "tqdm")
PIP = (sys.executable, "-m", "pip", "-q", "--disable-pip-version-check")


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in modules else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_every_missing_module_in_one_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _hide(monkeypatch, "matplotlib", "river")
    assert missing_requirements("demo") == ["matplotlib (the figures)", "river (the Yeast data)"]
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    # Nothing trained: no output folder (below); the time bound only catches a run of minutes
    # (generous: this machine may be loaded, and times are for benchmarks, not tests).
    assert time.perf_counter() - t0 < 20.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "missing matplotlib (the figures), river (the Yeast data)" in err
    assert err.rstrip().endswith(INSTALL)
    assert not (tmp_path / "o").exists()


def test_train_needs_matplotlib_before_training(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _hide(monkeypatch, "matplotlib")
    (tmp_path / "d.csv").write_text("1,0\n2,1\n3,0\n4,1\n")
    (tmp_path / "c.toml").write_text('[data]\npath = "d.csv"\n')
    assert main(["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "missing matplotlib (the figures)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert missing_requirements("bench") == []  # the timing benchmarks need torch only


def _requirement_closure(names: list[str]) -> set[str]:
    """The distributions ``names`` need (without extras), transitively."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _visible_site(folder: Path) -> Path:
    """A folder of links to torch, numpy and what they need, nothing else."""
    site = folder / "core-site"
    site.mkdir()
    for name in _requirement_closure(["torch", "numpy"]):
        dist = importlib.metadata.distribution(name)
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            if top == ".." or top.endswith(".pth") or top == "__pycache__":
                continue
            target = site / top
            if (base / top).exists() and not target.exists():
                target.symlink_to(base / top)
    return site


def _wheel(folder: Path) -> Path:
    # Built from a copy: setuptools leaves build/ and *.egg-info next to the sources.
    tree = folder / "tree"
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tree / name)
    proc = subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder), str(tree)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = folder.glob("labelgrad-*.whl")
    return wheel


@pytest.mark.timeout(300)
def test_the_wheel_without_extras_fails_fast_with_the_install_line(tmp_path: Path) -> None:
    if importlib.util.find_spec("packaging") is None:
        pytest.skip("packaging is needed to read the requirement metadata")
    wheel = _wheel(tmp_path / "dist")
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Only torch, numpy and their dependencies are visible: not pip, not the extras.
    Path(purelib, "core.pth").write_text(str(_visible_site(tmp_path)) + "\n")
    # Install the wheel with this interpreter's pip into the fresh environment's prefix, then
    # point the console script at the fresh interpreter (pip writes its own into the shebang).
    install = ["install", "--no-deps", "--no-index", "--ignore-installed", "--prefix"]
    proc = subprocess.run(
        [*PIP, *install, str(env_dir), "--no-warn-script-location", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    script = env_dir / "bin" / "labelgrad"
    script.write_text(re.sub(r"^#!.*", f"#!{python}", script.read_text(), count=1))
    check = f"import importlib.util as u; print([m for m in {EXTRAS!r} if u.find_spec(m)])"
    seen = subprocess.run([str(python), "-c", check], capture_output=True, text=True, check=True)
    assert seen.stdout.strip() == "[]", seen.stdout  # the premise: no extra is importable
    (tmp_path / "d.csv").write_text("1,0\n2,1\n3,0\n4,1\n")
    (tmp_path / "c.toml").write_text('[data]\npath = "d.csv"\n')
    # The time to import torch (labelgrad's one hard dependency) is not the command's doing.
    t0 = time.perf_counter()
    subprocess.run([str(python), "-c", "import labelgrad"], check=True, cwd=tmp_path)
    import_s = time.perf_counter() - t0
    for argv in (["demo"], ["train", "c.toml"]):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(script), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )
        seconds = time.perf_counter() - t0 - import_s
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert "missing matplotlib (the figures)" in proc.stderr
        assert proc.stderr.rstrip().endswith(INSTALL), proc.stderr
        assert seconds < 20.0, (argv, seconds, import_s)  # refused before any work (below)
    assert not (tmp_path / "labelgrad-out").exists()
    shutil.rmtree(env_dir)
