"""benchmarks/gpu_checks.py keeps working between the rare runs on a GPU: its smoke run on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.py"


@pytest.mark.slow
def test_smoke_run_on_the_cpu_passes_its_checks(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_checks", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "gpu.json"
        assert module.main(["--device", "cpu", "--quick", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report["smoke_run"] is True
    assert report["policies"]["max_rel_grad_error"] < 1e-5
    assert all(r["frozen_rows_bitwise"] for r in report["rows"].values())
    assert report["engines"]["exact_rel_error"] < 1e-5
