"""The ``labelgrad`` command at small sizes: demo, bench, train; exit codes; config validation;
exact resume; atomic outputs; the report in headless Chromium where installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from labelgrad.app.bench import Result
from labelgrad.app.cli import main


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--size", "tiny", "--quiet", "--json", "--out", str(out)])
    assert code == 0
    return out, json.loads(buf.getvalue())


def test_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["demo", "--help"], ["bench", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    assert "--resume" in capsys.readouterr().out
    for argv in ([], ["nope"], ["demo", "--seed", "x"], ["train"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert main(["demo", "--device", "warp9", "--quiet"]) == 2
    assert "unknown device" in capsys.readouterr().err


def test_console_script_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "labelgrad.app.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.startswith("labelgrad ")


def test_demo_writes_a_complete_report(demo_out: tuple[Path, dict[str, object]]) -> None:
    out, payload = demo_out
    rows = payload["rows"]
    assert isinstance(rows, list)
    methods = {(r["experiment"], r["method"]) for r in rows}
    assert ("digits-LT IF=100", "eqlv2") in methods
    assert ("Yeast, 50% labels hidden", "mask_unknown") in methods
    import labelgrad as lg

    if hasattr(lg, "RowRules"):
        assert ("digits-LT IF=10", "row_rules") in methods
    if hasattr(lg, "aggregate_backward"):
        assert ("Yeast, label aggregation", "UPGrad") in methods
    for r in rows:
        for key in ("balanced_acc", "few_shot_acc", "map", "macro_f1"):
            if key in r:
                assert len(r[key]["values"]) == 2  # one value per seed (tiny: 2 seeds)
                assert 0.0 <= r[key]["mean"] <= 1.0
    html = (out / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert {"per_class_accuracy.png", "grad_norm_plain_ce.png", "label_conflicts.png"} <= set(
        images
    )
    for name in images:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    history = (out / "monitor_digits_if100_plain_ce.history.csv").read_text().splitlines()
    assert history[0].split(",")[0] == "step"
    assert len(history) > 2
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


def test_demo_table_format() -> None:
    from labelgrad.app.demo_tables import Row, format_rows

    row = Row("e", "m", {"balanced_acc": [0.5, 0.7], "few_shot_acc": [0.1, 0.1]}, [2.0, 4.0])
    row.timed_ms, row.timed_ratio = 3.0, 1.5
    header, table = format_rows([row])
    assert header == ["method", "balanced acc %", "few-shot acc %", "step ms", "step × first"]
    assert table == [["m", " 60.0 ± 14.1", " 10.0 ±  0.0", "3.00", "1.50x"]]


def test_unwritable_out_fails_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--size", "tiny", "--quiet", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err
    assert err.count("\n") == 1


def _fake_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("labelgrad.app.bench.policies")

    def run(quick: bool = False) -> list[Result]:
        return [
            Result("policies/mlp", "plain", 1.0, 1.0),
            Result("policies/mlp", "chain", 1.02, 1.02, {"quick": quick}),
        ]

    mod.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "labelgrad.app.bench.policies", mod)


def test_bench_gathers_modules(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_bench(monkeypatch)
    assert main(["bench", "--only", "policies", "--quick", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "policies/mlp" in text
    assert "1.02x" in text
    argv = ["bench", "--only", "policies", "--quick", "--quiet", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["rows"][1]["extra"] == {"quick": True}
    assert json.loads((tmp_path / "bench.json").read_text()) == payload


def test_bench_without_modules_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, package: str | None = None) -> types.ModuleType:
        if name.startswith("labelgrad.app.bench."):
            raise ModuleNotFoundError(name=name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert main(["bench", "--quick", "--quiet"]) == 2
    assert "no benchmark modules" in capsys.readouterr().err


# --- train ------------------------------------------------------------------------------------


def _data(tmp_path: Path, n: int = 120, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, 5)) + y[:, None]
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", fmt="%.6g", header="a,b,c,d,e,label")
    return path


CONFIG = """
[data]
path = "d.csv"
[model]
hidden = [16]
[train]
epochs = {epochs}
batch_size = 32
lr = 0.01
[[policies]]
name = "class_weights"
beta = 0.99
[[policies]]
name = "eqlv2"
"""


def _config(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["train", *argv, "--quiet", "--threads", "1"])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_train_resume_equals_uninterrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _data(tmp_path)
    full = _config(tmp_path, CONFIG.format(epochs=4), "full.toml")
    code, out, _ = _train([str(full), "--out", str(tmp_path / "a"), "--json"], capsys)
    assert code == 0
    straight = json.loads(out)
    half = _config(tmp_path, CONFIG.format(epochs=2), "half.toml")
    assert _train([str(half), "--out", str(tmp_path / "b")], capsys)[0] == 0
    code, out, _ = _train([str(full), "--out", str(tmp_path / "b"), "--resume", "--json"], capsys)
    assert code == 0
    resumed = json.loads(out)
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["step_losses"] == straight["step_losses"]  # exact, on CPU
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key])
    for key in a["policy"]:  # EQLv2 and monitor statistics continue exactly too
        assert torch.equal(a["policy"][key], b["policy"][key])
    for name in ("report.html", "metrics.json", "monitor.csv", "grad_norm.png", "per_class.png"):
        assert (tmp_path / "b" / name).is_file()
    # A checkpoint of another config is refused.
    other = _config(tmp_path, CONFIG.format(epochs=4).replace("lr = 0.01", "lr = 0.02"), "o.toml")
    code, _, err = _train([str(other), "--out", str(tmp_path / "b"), "--resume"], capsys)
    assert code == 2
    assert "different config" in err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("[train]", "[train]\nepoch = 3"), "unknown key 'epoch'"),
        (lambda s: s.replace("batch_size = 32", 'batch_size = "32"'), "batch_size must be"),
        (lambda s: s.replace("epochs = 2", "epochs = true"), "epochs must be"),
        (lambda s: s.replace('"d.csv"', '"missing.csv"'), "file not found"),
        (lambda s: s.replace('"eqlv2"', '"focal"'), "unknown policy 'focal'"),
        (lambda s: s.replace("beta = 0.99", "beta = 0.99\nalpha = 1"), "unknown key 'alpha'"),
        (lambda s: s + "\n[extras]\n", "unknown table [extras]"),
        (lambda s: s + "\n[train\n", "invalid TOML"),
        (lambda s: s.replace("lr = 0.01", "lr = -1.0"), "lr must be a positive"),
        (lambda s: s.replace("hidden = [16]", 'hidden = ["a"]'), "hidden entries must be"),
        (lambda s: s.replace("[train]", '[train]\noptimizer = "lion"'), "optimizer must be"),
    ],
)
def test_config_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, message: str
) -> None:
    _data(tmp_path)
    cfg = _config(tmp_path, edit(CONFIG.format(epochs=2)))  # type: ignore[operator]
    code, _, err = _train([str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert message in err, err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _train([str(tmp_path / "none.toml")], capsys)
    assert code == 2
    assert "config file not found" in err


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("1,2,0\n3,4\n", "", "line 2 has 2 cells"),
        ("1,2,0\n3,x,1\n", "", "non-numeric"),
        ("1,2,0\n3,4,7\n5,6,1\n", "num_classes = 3", "line 2 has label 7, out of range"),
        ("1,2,0\n3,4,1\n", "label_columns = [9]", "label column 9 out of range"),
    ],
)
def test_bad_data_gives_a_clear_error_and_no_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, extra: str, message: str
) -> None:
    (tmp_path / "d.csv").write_text(content)
    cfg = _config(tmp_path, f'[data]\npath = "d.csv"\n{extra}\n[train]\nepochs = 1\n')
    code, _, err = _train([str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert message in err, err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "o" / "report.html").exists()
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_train_on_idx_and_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    images = (rng.integers(0, 50, (60, 4, 4)) + 40 * y[:, None, None]).astype(np.uint8)
    _write_idx(tmp_path / "img-idx3-ubyte", images)
    _write_idx(tmp_path / "lab-idx1-ubyte", y)
    cfg = _config(
        tmp_path,
        '[data]\npath = "img-idx3-ubyte"\nlabels = "lab-idx1-ubyte"\n[train]\nepochs = 2\n'
        '[[policies]]\nname = "clip_per_class"\nmax_norm = 1.0\n',
    )
    code, out, err = _train([str(cfg), "--out", str(tmp_path / "i"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["test"]["accuracy"] > 0.25
    # A truncated idx file is a clear input error.
    (tmp_path / "img-idx3-ubyte").write_bytes((tmp_path / "img-idx3-ubyte").read_bytes()[:-5])
    code, _, err = _train([str(cfg), "--out", str(tmp_path / "i2")], capsys)
    assert code == 2
    assert "declares shape" in err

    ym = (rng.random((60, 3)) < 0.4).astype(np.int64)
    ym[:5, 0] = -1
    np.savez(tmp_path / "m.npz", x=rng.normal(size=(60, 3)) + ym, y=ym)
    cfg = _config(
        tmp_path,
        '[data]\npath = "m.npz"\n[train]\nepochs = 1\n[[policies]]\nname = "mask_unknown"\n',
    )
    code, out, err = _train([str(cfg), "--out", str(tmp_path / "n"), "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["test"]) == {"map", "worst_ap", "macro_f1", "micro_f1"}
    # Unknown labels are left out of the loss itself: the run equals the one that masks them.
    plain = _config(tmp_path, '[data]\npath = "m.npz"\n[train]\nepochs = 1\n')
    code, _, err = _train([str(plain), "--out", str(tmp_path / "p"), "--json"], capsys)
    assert code == 0, err
    masked = torch.load(tmp_path / "n" / "checkpoint.pt", weights_only=True)["model"]
    unmasked = torch.load(tmp_path / "p" / "checkpoint.pt", weights_only=True)["model"]
    for name, value in masked.items():
        torch.testing.assert_close(unmasked[name], value, rtol=0, atol=1e-6)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
def test_report_opens_in_headless_chromium(demo_out: tuple[Path, dict[str, object]]) -> None:
    out, _ = demo_out
    assert CHROMIUM is not None
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "labelgrad demo" in proc.stdout
    # Chromium logs every console message (console.error, uncaught exceptions) as
    # "INFO:CONSOLE"; the report has no scripts, so any such line is an error.
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console


def test_train_row_rules_freeze_a_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _data(tmp_path)
    text = CONFIG.format(epochs=2) + "\n[rows]\nfrozen = [1]\nlr_scale_power = 0.5\n"
    cfg = _config(tmp_path, text)
    code, _, err = _train([str(cfg), "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["model"]
    torch.manual_seed(0)  # the run's initialisation, rebuilt independently
    from labelgrad.app.training import MLP

    init = MLP(5, [16], 3).state_dict()
    assert torch.equal(state["head.weight"][1], init["head.weight"][1])  # frozen row: unchanged
    assert torch.equal(state["head.bias"][1], init["head.bias"][1])
    assert not torch.equal(state["head.weight"][0], init["head.weight"][0])


def _multilabel_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((80, 4)) < 0.4).astype(np.int64)
    np.savez(tmp_path / "m.npz", x=rng.normal(size=(80, 4)) + y, y=y)


def test_train_aggregation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _data(tmp_path)
    cfg = _config(tmp_path, CONFIG.format(epochs=1) + '\n[aggregation]\naggregator = "UPGrad"\n')
    code, _, err = _train([str(cfg), "--out", str(tmp_path / "a")], capsys)
    assert code == 2
    assert "needs multilabel data" in err
    _multilabel_npz(tmp_path)
    text = '[data]\npath = "m.npz"\n[train]\nepochs = 2\n[aggregation]\naggregator = "{}"\n'
    code, out, err = _train(
        [str(_config(tmp_path, text.format("UPGrad"))), "--out", str(tmp_path / "u"), "--json"],
        capsys,
    )
    assert code == 0, err
    assert len(json.loads(out)["epoch_loss"]) == 2
    code, _, err = _train(
        [str(_config(tmp_path, text.format("Nope"))), "--out", str(tmp_path / "v")], capsys
    )
    assert code == 2
    assert "'Nope' is not an aggregator (expected one of: " in err


def _png_width(path: Path) -> int:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return int.from_bytes(data[16:20], "big")


def _narrow_images(folder: Path) -> list[tuple[str, int]]:
    html = (folder / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert images
    return [(name, w) for name in images if (w := _png_width(folder / name)) < 1000]


def test_demo_report_images_are_at_least_1000_px_wide(
    demo_out: tuple[Path, dict[str, object]],
) -> None:
    assert _narrow_images(demo_out[0]) == []


def test_train_report_with_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _data(tmp_path)
    cfg = _config(tmp_path, CONFIG.format(epochs=3))
    code, out, err = _train(
        [str(cfg), "--out", str(tmp_path / "o"), "--baseline", "--json"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    base = summary["baseline"]
    assert set(base["test"]) == set(summary["test"]) == {"accuracy", "balanced_accuracy"}
    assert len(base["epoch_loss"]) == len(summary["epoch_loss"]) == 3
    assert base["epoch_loss"] != summary["epoch_loss"]  # the policies change training
    assert len(summary["val_metric"]) == 3
    assert sum(map(sum, summary["confusion"])) == summary["test_samples"]
    html = (tmp_path / "o" / "report.html").read_text()
    for needle in ("baseline (plain loss)", "balanced accuracy %", "confusion.png", "[train]"):
        assert needle in html
    assert _narrow_images(tmp_path / "o") == []


def test_train_warns_when_the_validation_metric_still_rises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _data(tmp_path, n=600)
    text = '[data]\npath = "d.csv"\n[model]\nhidden = [16]\n[train]\nepochs = 3\nlr = 0.003\n'
    cfg = _config(tmp_path, text.replace("lr", "batch_size = 32\nlr"))
    code, out, err = _train([str(cfg), "--out", str(tmp_path / "o"), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    v = summary["val_metric"]
    assert v[-1] > max(v[:-1])  # the premise: a slow learning rate, still improving
    assert "validation balanced_accuracy was still rising at the last epoch" in err
    assert summary["warnings"]


def test_train_early_stopping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _data(tmp_path)
    text = CONFIG.format(epochs=30).replace("[train]", "[train]\npatience = 2")
    code, out, err = _train(
        [str(_config(tmp_path, text)), "--out", str(tmp_path / "o"), "--json"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    v, n = summary["val_metric"], summary["epochs_trained"]
    assert summary["stopped_early"] and n < 30
    assert max(v[-2:]) <= max(v[:-2])  # the last 2 epochs did not improve: why it stopped


def test_mask_unknown_in_train_says_the_loss_already_ignores_unknowns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _multilabel_npz(tmp_path)
    text = '[data]\npath = "m.npz"\n[train]\nepochs = 1\n[[policies]]\nname = "mask_unknown"\n'
    code, out, err = _train([str(_config(tmp_path, text)), "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "mask_unknown changes nothing" in out
    assert "already ignores unknown (-1) labels" in out
