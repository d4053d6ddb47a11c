"""``labelgrad train`` runs every public policy, chooses its baseline, restores the best epoch,
splits by class and watches its own loss (issue 23, "A practitioner's first day")."""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg
from labelgrad.app import train_config
from labelgrad.app.cli import main
from labelgrad.app.train_data import split_indices

pytest.importorskip("matplotlib")

NOT_CONFIG_ENTRIES = {
    "chain": "the [[policies]] list is itself the chain",
    "schedule": "every entry takes start_epoch / end_epoch (lg.schedule in steps)",
    "monitor": "every run has one (monitor.csv, grad_norm.png)",
}
"""Public policy factories that are not a [[policies]] name, and why."""


def _policy_factories() -> list[str]:
    """The functions of lg.policies.__all__ that build a Policy."""
    out = []
    for name in lg.policies.__all__:
        obj = getattr(lg.policies, name)
        if not inspect.isfunction(obj):
            continue
        ret = typing.get_type_hints(obj).get("return")
        if isinstance(ret, type) and issubclass(ret, lg.Policy):
            out.append(name)
    return out


def test_every_public_policy_is_in_the_config_schema() -> None:
    factories = set(_policy_factories())
    assert {"logit_adjust", "seesaw", "ldam_drw", "asymmetric_focus", "eql"} <= factories
    missing = factories - set(NOT_CONFIG_ENTRIES) - set(train_config.POLICY_KEYS)
    assert not missing, f"public policies `labelgrad train` cannot build: {sorted(missing)}"
    assert set(train_config.POLICY_KEYS) <= factories  # no config name without its factory
    # Every key a config accepts is a keyword of the factory (or a count the data supplies).
    config_only = {"class_weights": {"weights", "beta"}, "ldam_drw": {"drw_epoch"}}
    for name, keys in train_config.POLICY_KEYS.items():
        params = set(inspect.signature(getattr(lg, name)).parameters)
        assert set(keys) - config_only.get(name, set()) <= params, name


def _multiclass_csv(folder: Path, n: int = 150, classes: int = 3) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), [n // 2, n // 3, n - n // 2 - n // 3])
    x = rng.normal(size=(n, 5)) + y[:, None]
    np.savetxt(
        folder / "d.csv", np.column_stack([x, y]), delimiter=",", fmt="%.6g", header="a,b,c,d,e,y"
    )


def _multilabel_npz(folder: Path) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((100, 4)) < 0.4).astype(np.int64)
    y[rng.random((100, 4)) < 0.3] = -1  # unknown labels
    np.savez(folder / "m.npz", x=rng.normal(size=(100, 4)) + (y == 1), y=y)


# A config entry for each policy name (required keys, and some optional ones).
ENTRIES = {
    "mask_unknown": "",
    "mask": "keep = [true, true, false, true]",
    "class_weights": "beta = 0.99",
    "pos_neg_weights": "pos = 2.0\nneg = [1.0, 0.5, 1.0, 1.0]",
    "eqlv2": "alpha = 2.0",
    "eql": "freq_threshold = 0.3",
    "logit_adjust": "tau = 1.0",
    "seesaw": "p = 0.8",
    "ldam_drw": "s = 5.0\ndrw_epoch = 1",
    "labels_trick": "",
    "asymmetric_focus": "gamma_neg = 2.0",
    "clip_per_class": "max_norm = 1.0",
    "clip_per_sample": "max_norm = 1.0",
    "freeze_classes": "classes = [0]",
}
MULTILABEL_ONLY = {"asymmetric_focus", "mask_unknown", "mask", "pos_neg_weights"}


def _train(folder: Path, text: str, *flags: str) -> tuple[int, str, str, dict[str, Any]]:
    import contextlib
    import io

    (folder / "c.toml").write_text(text)
    out, err = io.StringIO(), io.StringIO()
    # --force: the tests train several configs into one folder on purpose.
    argv = [
        *("train", str(folder / "c.toml"), "--out", str(folder / "o")),
        *("--quiet", "--json", "--force"),
    ]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--threads", "1", *flags])
    summary = json.loads(out.getvalue()) if code == 0 else {}
    return code, out.getvalue(), err.getvalue(), summary


@pytest.mark.parametrize("name", sorted(train_config.POLICY_KEYS))
def test_every_config_policy_trains(tmp_path: Path, name: str) -> None:
    multilabel = name in MULTILABEL_ONLY
    _multilabel_npz(tmp_path) if multilabel else _multiclass_csv(tmp_path)
    data = '"m.npz"' if multilabel else '"d.csv"'
    entry = ENTRIES[name]
    if not multilabel:
        entry = entry.replace("[1.0, 0.5, 1.0, 1.0]", "[1.0, 0.5, 1.0]")
    text = (
        f"[data]\npath = {data}\n[model]\nhidden = [8]\n[train]\nepochs = 2\nbatch_size = 32\n"
        f'[[policies]]\nname = "{name}"\n{entry}\nstart_epoch = 0\nend_epoch = 2\n'
    )
    code, _, err, summary = _train(tmp_path, text)
    assert code == 0, err
    assert len(summary["epoch_loss"]) == 2


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("logit_adjust", "m.npz", "needs single-label (multiclass) data"),
        ("seesaw", "m.npz", "needs single-label (multiclass) data"),
        ("ldam_drw", "m.npz", "needs single-label (multiclass) data"),
        ("asymmetric_focus", "d.csv", "needs multilabel data"),
    ],
)
def test_a_policy_of_the_other_loss_is_refused(
    tmp_path: Path, name: str, data: str, message: str
) -> None:
    _multilabel_npz(tmp_path)
    _multiclass_csv(tmp_path)
    text = f'[data]\npath = "{data}"\n[train]\nepochs = 1\n[[policies]]\nname = "{name}"\n'
    code, _, err, _ = _train(tmp_path, text)
    assert code == 2
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name = "eql"', "freq_threshold is required"),
        ('name = "mask"\nkeep = [1, 0, 1]', "keep entries must be true/false"),
        ('name = "mask"\nkeep = [true]', "keep has 1 entries, expected 3"),
        ('name = "seesaw"\nstart_epoch = -1', "start_epoch must be >= 0"),
        ('name = "seesaw"\nstart_epoch = 2\nend_epoch = 1', "end_epoch must be > start_epoch"),
        ('name = "seesaw"\nstart_epoch = 5', "start_epoch 5 is not before [train] epochs 3"),
        ('name = "ldam_drw"\nbeta = 1.5\ndrw_epoch = 1', "[[policies]] ldam_drw"),
        ('name = "logit_adjust"\ntau = -1.0', "[[policies]] logit_adjust"),
        ('name = "logit_adjust"\nprior = [1, 2, 3]', "unknown key 'prior'"),
        ('name = "logit_adjust"\ntau = nan', "[[policies]] logit_adjust"),
        ('name = "seesaw"\np = inf', "[[policies]] seesaw"),
        ('name = "eql"\nfreq_threshold = nan', "[[policies]] eql"),
        ('name = "logit_adjust"\ntau = true', "tau must be"),
        ('name = "ldam_drw"\nbeta = 0.9', "give drw_epoch"),
        ('name = "ldam_drw"\ndrw_epoch = 3', "drw_epoch 3 is not before [train] epochs 3"),
        ('name = "ldam_drw"\ndrw_epoch = -1', "drw_epoch must be >= 0"),
        (
            'name = "logit_adjust"\n[[policies]]\nname = "seesaw"',
            "[[policies]]: chain: Seesaw and LogitAdjust both replace the gradient",
        ),
        (
            'name = "eqlv2"\n[[policies]]\nname = "logit_adjust"',
            "[[policies]]: chain: LogitAdjust replaces the gradient of the plain loss, so it must come first",
        ),
    ],
)
def test_bad_policy_entries_are_one_line_errors(tmp_path: Path, entry: str, message: str) -> None:
    _multiclass_csv(tmp_path)
    text = f'[data]\npath = "d.csv"\n[train]\nepochs = 3\n[[policies]]\n{entry}\n'
    code, _, err, _ = _train(tmp_path, text)
    assert code == 2, err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("data", "before", "after"),
    [
        ("d.csv", "clip_per_sample", "logit_adjust"),  # row-wise: keeps the softmax form
        ("m.npz", "eqlv2", "asymmetric_focus"),  # entry-wise: keeps the per-label BCE form
        ("m.npz", "pos_neg_weights", "asymmetric_focus"),
    ],
)
def test_the_command_accepts_every_order_the_library_accepts(
    tmp_path: Path, data: str, before: str, after: str
) -> None:
    # One rule on the order of gradient-replacing policies: lg.chain's, not a stricter copy.
    _multilabel_npz(tmp_path) if data == "m.npz" else _multiclass_csv(tmp_path)
    text = (
        f'[data]\npath = "{data}"\n[model]\nhidden = [8]\n[train]\nepochs = 1\n'
        f'[[policies]]\nname = "{before}"\n{ENTRIES[before]}\n'
        f'[[policies]]\nname = "{after}"\n{ENTRIES[after]}\n'
    )
    code, _, err, _ = _train(tmp_path, text)
    assert code == 0, err


def test_counts_and_priors_come_from_the_training_data(tmp_path: Path) -> None:
    """logit_adjust in `train` gives the gradient of CE on z + log(training frequencies)."""
    from labelgrad.app.train_build import build_parts
    from labelgrad.app.train_config import load_config
    from labelgrad.app.train_data import load_data

    _multiclass_csv(tmp_path)

    def parts_of(entry: str) -> Any:
        (tmp_path / "c.toml").write_text(f'[data]\npath = "d.csv"\n[[policies]]\n{entry}\n')
        cfg = load_config(tmp_path / "c.toml")
        data, _ = load_data(cfg, seed=0)
        return data, build_parts(cfg, data, 0, torch.device("cpu"))

    data, parts = parts_of('name = "logit_adjust"')
    counts = np.bincount(data.y_train.numpy(), minlength=3)
    la = next(m for m in parts.policy.modules() if isinstance(m, lg.LogitAdjust))
    torch.testing.assert_close(la.prior.double(), torch.tensor(counts / counts.sum()))
    _, parts = parts_of('name = "ldam_drw"\ndrw_epoch = 2')
    drw = next(m for m in parts.policy.modules() if isinstance(m, lg.Schedule))
    assert drw.start_step == 2 * int(np.ceil(len(data.y_train) / 64))
    z = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    F.cross_entropy(la(z, y), y).backward()
    ref = z.detach().clone().requires_grad_(True)
    F.cross_entropy(ref + torch.tensor(np.log(counts / counts.sum())).float(), y).backward()
    torch.testing.assert_close(z.grad, ref.grad)


# --- the baseline -----------------------------------------------------------------------------


def test_baseline_unknown_as_negative_on_multilabel_data(tmp_path: Path) -> None:
    _multilabel_npz(tmp_path)
    text = '[data]\npath = "m.npz"\n[train]\nepochs = 2\n[[policies]]\nname = "mask_unknown"\n'
    runs = {}
    for kind in ("plain", "unknown-as-negative"):
        code, _, err, summary = _train(tmp_path, text, "--baseline", kind)
        assert code == 0, err
        assert summary["baseline"]["kind"] == kind
        runs[kind] = summary["baseline"]["epoch_loss"]
        html = (tmp_path / "o" / "report.html").read_text()
        label = "plain loss" if kind == "plain" else "unknown labels as negatives"
        assert f"baseline ({label})" in html
    # A different loss trains a different baseline; --baseline alone is the plain one.
    assert runs["plain"] != runs["unknown-as-negative"]
    code, _, err, summary = _train(tmp_path, text, "--baseline")
    assert code == 0, err
    assert summary["baseline"]["kind"] == "plain"
    assert summary["baseline"]["epoch_loss"] == runs["plain"]


def test_unknown_as_negative_baseline_is_the_bce_of_hidden_labels_as_zeros() -> None:
    from labelgrad.app.train_build import Parts, make_step
    from labelgrad.app.training import MLP

    torch.manual_seed(0)
    model = MLP(3, [4], 2)
    ref = MLP(3, [4], 2)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    parts = Parts(model, lg.chain(), lg.monitor(num_classes=2), opt, None, False)
    parts.unknown_as_negative = True
    x, y = torch.randn(5, 3), torch.tensor([[1, -1], [0, 1], [-1, -1], [1, 0], [0, 0]])
    loss = make_step(parts, multilabel=True)(x, y)
    want = F.binary_cross_entropy_with_logits(ref(x), y.clamp(min=0).float())
    torch.testing.assert_close(loss, want.detach())
    want.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_unknown_as_negative_baseline_needs_multilabel_data(tmp_path: Path) -> None:
    _multiclass_csv(tmp_path)
    code, _, err, _ = _train(
        tmp_path,
        '[data]\npath = "d.csv"\n[train]\nepochs = 1\n',
        "--baseline",
        "unknown-as-negative",
    )
    assert code == 2
    assert "needs multilabel data" in err and err.count("\n") == 1


# --- early stopping ---------------------------------------------------------------------------


def test_early_stopping_tests_the_best_epoch(tmp_path: Path) -> None:
    _multiclass_csv(tmp_path, n=300)
    text = (
        '[data]\npath = "d.csv"\nvalidation_fraction = 0.3\n[model]\nhidden = [16]\n'
        "[train]\nepochs = 40\nlr = 0.05\nbatch_size = 32\npatience = 3\n"
    )
    code, _, err, summary = _train(tmp_path, text)
    assert code == 0, err
    v, best = summary["val_metric"], summary["best_epoch"]
    assert summary["stopped_early"] and summary["restored_best_epoch"]
    assert best == 1 + int(np.argmax(v)) and best < summary["epochs_trained"]
    html = (tmp_path / "o" / "report.html").read_text()
    assert f"tested with the weights of epoch {best}, its best validation epoch" in html
    saved = torch.load(tmp_path / "o" / "best_model.pt", weights_only=True)
    assert saved["epoch"] == best
    assert "best_model.pt" in summary["files"]
    # A run that stops at the best epoch has the same weights and the same test metrics.
    short = tmp_path / "short"
    short.mkdir()
    (short / "d.csv").write_bytes((tmp_path / "d.csv").read_bytes())
    code, _, err, at_best = _train(short, text.replace("epochs = 40", f"epochs = {best}"))
    assert code == 0, err
    assert at_best["test"] == summary["test"]
    ckpt = torch.load(short / "o" / "checkpoint.pt", weights_only=True)
    for k, w in ckpt["model"].items():
        assert torch.equal(w, saved["model"][k]), k


def test_a_resumed_run_restores_a_best_epoch_from_before_the_resume(tmp_path: Path) -> None:
    _multiclass_csv(tmp_path, n=300)
    text = (
        '[data]\npath = "d.csv"\nvalidation_fraction = 0.3\n[model]\nhidden = [16]\n'
        "[train]\nepochs = {}\nlr = 0.05\nbatch_size = 32\npatience = 3\n"
    )
    code, _, err, straight = _train(tmp_path, text.format(40))
    assert code == 0, err
    best = straight["best_epoch"]
    # The same run interrupted one epoch after its best, then resumed.
    import shutil

    shutil.rmtree(tmp_path / "o")
    code, _, err, _ = _train(tmp_path, text.format(best + 1))
    assert code == 0, err
    code, _, err, resumed = _train(tmp_path, text.format(40), "--resume")
    assert code == 0, err
    assert resumed["best_epoch"] == best and resumed["restored_best_epoch"]
    assert resumed["test"] == straight["test"]


# --- validation split -------------------------------------------------------------------------


def test_split_is_stratified_by_class() -> None:
    y = np.repeat(np.arange(4), [500, 120, 31, 3])
    te, va, tr = split_indices(y, 0.2, 0.1, seed=3)
    assert sorted(np.concatenate([te, va, tr]).tolist()) == list(range(len(y)))
    counts = np.bincount(y)
    assert np.bincount(y[te], minlength=4).tolist() == np.rint(0.2 * counts).tolist()
    assert (
        np.bincount(y[va], minlength=4).tolist()
        == (np.rint(0.3 * counts) - np.rint(0.2 * counts)).tolist()
    )
    # Seeded: the same seed gives the same split, another seed another one.
    assert all(
        np.array_equal(a, b)
        for a, b in zip((te, va, tr), split_indices(y, 0.2, 0.1, 3), strict=True)
    )
    assert not np.array_equal(te, split_indices(y, 0.2, 0.1, seed=4)[0])


def test_split_of_tiny_or_multilabel_data_stays_valid() -> None:
    te, va, tr = split_indices(np.array([0, 1]), 0.2, 0.0, seed=0)
    assert len(te) == 1 and len(tr) == 1
    y = (np.random.default_rng(0).random((20, 3)) < 0.5).astype(int)
    te, va, tr = split_indices(y, 0.2, 0.1, seed=0)
    assert (len(te), len(va), len(tr)) == (4, 2, 14)


def _long_tailed_multilabel(n: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < np.geomspace(0.5, 0.01, c)).astype(np.int64)
    y[rng.random((n, c)) < 0.1] = -1  # unknown
    return y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_split_is_stratified_by_label(seed: int) -> None:
    y = _long_tailed_multilabel(2000, 14, seed)
    te, va, tr = split_indices(y, 0.2, 0.1, seed=seed)
    assert sorted(np.concatenate([te, va, tr]).tolist()) == list(range(len(y)))
    assert (len(te), len(va), len(tr)) == (400, 200, 1400)  # the random split's sizes
    positives = (y == 1).sum(axis=0)
    for part, fraction in ((te, 0.2), (va, 0.1), (tr, 0.7)):
        # Within one sample of the proportion for every label, the rare ones included (a
        # permutation is off by about sqrt(count): ~6 samples of the frequent labels here).
        assert np.abs((y[part] == 1).sum(axis=0) - fraction * positives).max() <= 1.0
    # Unknown labels (-1) are not positives: the same split as with them read as 0.
    known = np.where(y == -1, 0, y)
    assert all(
        np.array_equal(a, b)
        for a, b in zip((te, va, tr), split_indices(known, 0.2, 0.1, seed), strict=True)
    )
    # Seeded: the same seed gives the same split, another seed another one.
    assert all(
        np.array_equal(a, b)
        for a, b in zip((te, va, tr), split_indices(y, 0.2, 0.1, seed), strict=True)
    )
    assert not np.array_equal(te, split_indices(y, 0.2, 0.1, seed + 10)[0])


def test_a_random_split_of_the_same_data_is_not_stratified() -> None:
    # What the test above excludes happens at random: the check there can fail.
    y = _long_tailed_multilabel(2000, 14, 0)
    te = np.random.default_rng(0).permutation(len(y))[:400]
    assert np.abs((y[te] == 1).sum(axis=0) - 0.2 * (y == 1).sum(axis=0)).max() > 1.0


def test_few_validation_samples_of_a_class_warn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [300, 100, 12])
    x = rng.normal(size=(len(y), 4)) + y[:, None]
    np.savetxt(tmp_path / "d.csv", np.column_stack([x, y]), delimiter=",", fmt="%.5g")
    text = '[data]\npath = "d.csv"\n[train]\nepochs = 1\npatience = 2\n'
    code, _, err, summary = _train(tmp_path, text)
    assert code == 0, err
    assert "fewer than 5 samples of 1 of 3 classes ('2': 2)" in err
    assert "early stopping on it" in err
    assert any("fewer than 5 samples" in w for w in summary["warnings"])
    assert "fewer than 5 samples" in (tmp_path / "o" / "report.html").read_text()
    code, _, err, _ = _train(
        tmp_path, text.replace("[train]", "validation_fraction = 0.5\n[train]")
    )
    assert code == 0, err
    assert "fewer than 5" not in err


# --- the loss watch ---------------------------------------------------------------------------


SGD = (
    '[data]\npath = "d.csv"\n[model]\nhidden = [16]\n[train]\nepochs = {epochs}\nbatch_size = 32\n'
    'optimizer = "sgd"\nlr = {lr}\n'
)


def test_a_diverging_run_warns_on_the_terminal_and_in_the_report(tmp_path: Path) -> None:
    _multiclass_csv(tmp_path, n=120)
    code, _, err, summary = _train(tmp_path, SGD.format(epochs=6, lr=3.0))
    assert code == 0, err
    loss = summary["epoch_loss"]
    assert loss[-1] > 2 * min(loss)  # the premise: it does diverge
    assert "configured run: the training loss diverges" in err
    assert any("diverges" in w for w in summary["warnings"])
    assert "the training loss diverges" in (tmp_path / "o" / "report.html").read_text()
    code, _, err, _ = _train(tmp_path, SGD.format(epochs=6, lr=0.3))
    assert code == 0 and "diverges" not in err  # a converging run says nothing


def test_a_nan_loss_stops_the_run_with_exit_1(tmp_path: Path) -> None:
    _multiclass_csv(tmp_path, n=120)
    code, _, err, _ = _train(tmp_path, SGD.format(epochs=3, lr=1e30))
    assert code == 1
    assert "the training loss became nan at step" in err, err
    assert "training stopped (no checkpoint was written)" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_eqlv2_with_row_rules_is_noted(tmp_path: Path) -> None:
    _multiclass_csv(tmp_path)
    text = (
        '[data]\npath = "d.csv"\n[train]\nepochs = 1\n[[policies]]\nname = "eqlv2"\n'
        "[rows]\nlr_scale_power = 1.0\n"
    )
    code, _, err, summary = _train(tmp_path, text)
    assert code == 0, err
    assert any("eqlv2 with [rows] frozen / lr_scale can diverge" in n for n in summary["notes"])
    code, _, err, summary = _train(tmp_path, text.replace("[rows]\nlr_scale_power = 1.0\n", ""))
    assert not any("eqlv2 with [rows]" in n for n in summary["notes"])


# --- the terminal -----------------------------------------------------------------------------


def test_terminal_prints_percentages_as_the_report(tmp_path: Path) -> None:
    import contextlib
    import io

    _multiclass_csv(tmp_path)
    (tmp_path / "c.toml").write_text('[data]\npath = "d.csv"\n[train]\nepochs = 1\n')
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "o"), "-q"])
    assert code == 0
    summary = json.loads((tmp_path / "o" / "metrics.json").read_text())
    acc = 100 * summary["test"]["balanced_accuracy"]
    assert f"balanced accuracy {acc:.1f} %" in buf.getvalue()
    assert f"{acc:.1f}" in (tmp_path / "o" / "report.html").read_text()


def test_progress_bar_ends_at_100_percent_on_an_early_stop(tmp_path: Path) -> None:
    from labelgrad.app import train

    bars: list[Any] = []
    real = train.progress_bar

    def spy(total: int, **kw: Any) -> Any:
        bars.append(real(total, **kw))
        return bars[-1]

    _multiclass_csv(tmp_path, n=300)
    text = (
        '[data]\npath = "d.csv"\nvalidation_fraction = 0.3\n[model]\nhidden = [16]\n'
        "[train]\nepochs = 40\nlr = 0.05\nbatch_size = 32\npatience = 3\n"
    )
    (tmp_path / "c.toml").write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "progress_bar", spy)
        summary = train.run_train(
            tmp_path / "c.toml", out=tmp_path / "o", quiet=False, echo=None, warn=lambda m: None
        )
    assert summary["stopped_early"]
    (bar,) = bars
    steps = -(-summary["train_samples"] // 32)
    assert bar.n == bar.total == summary["epochs_trained"] * steps
