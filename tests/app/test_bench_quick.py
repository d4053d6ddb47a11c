"""``labelgrad bench --quick`` says it is a smoke run and labels what it runs; ``--quiet`` keeps
the profiler's native stderr lines off the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from labelgrad.app.bench import Result
from labelgrad.app.cli import QUICK_NOTE, main

ROOT = Path(__file__).parents[2]


def _fake_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("labelgrad.app.bench.policies")

    def run(quick: bool = False) -> list[Result]:
        os.write(2, b"USDT: fake native profiler_start\n")  # as torch's profiler does
        return [Result("policies/mlp", "plain", 1.0, 1.0)]

    mod.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "labelgrad.app.bench.policies", mod)


def test_quiet_silences_native_stderr(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    _fake_bench(monkeypatch)
    assert main(["bench", "--only", "policies", "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert "USDT" not in err and "policies/mlp" in out
    sys.stderr.write("stderr works again\n")
    assert "stderr works again" in capfd.readouterr().err
    assert main(["bench", "--only", "policies"]) == 0  # without --quiet, nothing is hidden
    assert "USDT: fake native profiler_start" in capfd.readouterr().err


def test_quick_says_it_is_a_smoke_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_bench(monkeypatch)
    assert main(["bench", "--only", "policies", "--quick", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(QUICK_NOTE + "\n")
    assert "smoke run" in QUICK_NOTE and "not a measurement" in QUICK_NOTE
    assert main(["bench", "--only", "policies", "--quick", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["note"] == QUICK_NOTE
    assert main(["bench", "--only", "policies", "--quiet"]) == 0
    assert "smoke run" not in capsys.readouterr().out


def test_quick_policy_rows_name_the_models_they_run() -> None:
    """Run for real, in a subprocess (the profiler writes to the process's fd 2)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-m", "labelgrad", "bench", "--quick", "--only", "policies", "--quiet"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "USDT" not in proc.stderr, proc.stderr
    assert "784-1024-1024" not in proc.stdout
    assert "policies/mlp 784-64-64, batch 16" in proc.stdout
    assert "policies/cnn 28x28 4 ch, batch 16" in proc.stdout
