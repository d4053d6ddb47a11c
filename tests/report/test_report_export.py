"""GradMonitor export, the conflict matrix and atomic writes (library code)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

import labelgrad as lg
from labelgrad.report import (
    atomic_path,
    label_gramian,
    log_monitor_tensorboard,
    monitor_records,
    save_monitor,
)


def _trained_monitor(steps: int = 7, history: int = 4) -> lg.GradMonitor:
    torch.manual_seed(0)
    mon = lg.monitor(num_classes=3, history=history)
    for _ in range(steps):
        z = torch.randn(5, 3, requires_grad=True)
        y = torch.randint(0, 3, (5,))
        torch.nn.functional.cross_entropy(mon(z, y), y).backward()
    return mon


def test_csv_and_json_hold_the_buffers(tmp_path: Path) -> None:
    mon = _trained_monitor()
    save_monitor(mon, tmp_path / "m.csv", ["a", "b", "c"])
    save_monitor(mon, tmp_path / "m.json", ["a", "b", "c"])
    save_monitor(mon, tmp_path / "m.history.csv", ["a", "b", "c"])
    with open(tmp_path / "m.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["class"] for r in rows] == ["a", "b", "c"]
    assert [float(r["pos_abs"]) for r in rows] == mon.pos_abs.tolist()
    assert [float(r["rms_norm"]) for r in rows] == mon.mean_norm().tolist()
    payload = json.loads((tmp_path / "m.json").read_text())
    assert [r["neg_abs"] for r in payload["classes"]] == mon.neg_abs.tolist()
    assert payload["history"] == mon.recent_norms().tolist()
    with open(tmp_path / "m.history.csv") as fh:
        hist = list(csv.reader(fh))
    # The ring buffer keeps the last 4 of 7 steps, oldest first; the last is last_norm.
    assert [int(r[0]) for r in hist[1:]] == [3, 4, 5, 6]
    assert [float(v) for v in hist[-1][1:]] == mon.last_norm.tolist()


def test_records_and_bad_arguments(tmp_path: Path) -> None:
    mon = _trained_monitor()
    recs = monitor_records(mon)
    assert [r["class"] for r in recs] == ["0", "1", "2"]
    assert recs[0]["pos_neg_ratio"] == pytest.approx(recs[0]["pos_abs"] / recs[0]["neg_abs"])
    with pytest.raises(ValueError, match="class_names"):
        monitor_records(mon, ["a"])
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        save_monitor(mon, tmp_path / "m.txt")


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="tensorboard (extra 'tensorboard') is not installed",
)
def test_tensorboard_export(tmp_path: Path) -> None:
    mon = _trained_monitor()
    log_monitor_tensorboard(mon, tmp_path / "tb")
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").rglob("*"))


def test_label_gramian_matches_separate_backward_passes() -> None:
    torch.manual_seed(0)
    trunk = torch.nn.Linear(4, 6)
    head = torch.nn.Linear(6, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8, 3)).float()
    losses = torch.nn.functional.binary_cross_entropy_with_logits(
        head(torch.relu(trunk(x))), y, reduction="none"
    ).mean(0)
    gram = label_gramian(losses, trunk.parameters())
    grads = []
    for k in range(3):
        g = torch.autograd.grad(losses[k], list(trunk.parameters()), retain_graph=True)
        grads.append(torch.cat([t.reshape(-1) for t in g]))
    jac = torch.stack(grads)
    torch.testing.assert_close(gram, jac @ jac.T)
    cos = torch.nn.functional.cosine_similarity(jac[:, None], jac[None], dim=-1)
    torch.testing.assert_close(lg.conflicts(gram), cos)


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fail() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
