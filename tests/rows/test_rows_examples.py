"""Smoke tests: the level-2 examples and benchmark run and show what they claim."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from labelgrad.app.bench import rows as bench_rows

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_class_incremental_example_freezes_old_rows_exactly():
    moved = load("class_incremental").main(epochs=2)
    assert moved["labelgrad RowRules"] == 0.0
    assert moved["gradient masking"] > 1e-4


def test_separate_optimizers_example_routes_by_label():
    results = load("separate_optimizers_by_label").main(epochs=2)
    assert results["lg.route"]["drift_steps"] == 0
    assert results["every optimizer"]["drift_steps"] > 0


def test_rows_benchmark_quick_runs():
    rows = bench_rows.run(quick=True)
    assert {r.benchmark for r in rows} == {"rows/train_step", "rows/optimizer_step"}
    assert all(r.median_ms > 0 for r in rows)


def test_rows_benchmark_has_a_zero_state_case():
    rows = bench_rows.run(quick=True, state="zero")
    assert {r.benchmark for r in rows} == {
        "rows/train_step_zero_state",
        "rows/optimizer_step_zero_state",
    }
    assert all(r.extra["state"] == "zero" and r.median_ms > 0 for r in rows)
    with pytest.raises(ValueError, match="state"):
        bench_rows.run(quick=True, state="cold")
