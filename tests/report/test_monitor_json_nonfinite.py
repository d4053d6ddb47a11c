"""GradMonitor's JSON export stays valid JSON when a statistic is not finite (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import labelgrad as lg
from labelgrad.report.export import save_monitor


def test_json_export_writes_null_not_nan(tmp_path: Path) -> None:
    mon = lg.monitor(num_classes=2, history=3)
    z = torch.zeros(2, 2, requires_grad=True)
    up = torch.tensor([[float("inf"), 1.0], [float("nan"), 1.0]])
    torch.autograd.grad(mon(z), z, up)  # last_norm and history hold inf / nan for class 0
    text = save_monitor(mon, tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    payload = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert payload["classes"][0]["last_norm"] is None
    assert abs(payload["classes"][1]["last_norm"] - 2**0.5) < 1e-6
    assert payload["history"][0][0] is None
