"""Hostile review of issue 24's command changes (HOSTILE.md 5 and 6).

The new ``[data] header`` key, the order of gradient-replacing policies now checked by
``lg.chain`` alone, and the iterative stratification of multi-label test/validation splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelgrad.app.cli import main
from labelgrad.app.datafiles import DataError
from labelgrad.app.train_config import ConfigError, load_config
from labelgrad.app.train_data import load_data, split_indices

BASE = "[model]\nhidden = [4]\n[train]\nepochs = 1\nbatch_size = 8\n"


def _rows(n: int = 24) -> str:
    return "".join(f"{i / 10},{(i * 7) % 5},{i % 3}\n" for i in range(n))


def _load(tmp_path: Path, text: str, data_keys: str):
    (tmp_path / "d.csv").write_text(text)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\npath = "d.csv"\n{data_keys}\n{BASE}')
    data, _ = load_data(load_config(cfg), 0)
    return data


# --- [data] header -----------------------------------------------------------------------


def test_header_true_takes_a_header_of_numbers_as_names(tmp_path: Path) -> None:
    """A header of numbers reads as a sample when guessed; ``header = true`` says otherwise."""
    guessed = _load(tmp_path, "1,2,7\n" + _rows(), "")
    told = _load(tmp_path, "1,2,7\n" + _rows(), "header = true")
    n_told = len(told.x_train) + len(told.x_test)
    assert n_told == 24 and len(guessed.x_train) + len(guessed.x_test) == 25
    assert told.class_names == ("0", "1", "2")  # no class '7' from the header row


def test_header_true_names_select_label_columns_of_a_numeric_header(tmp_path: Path) -> None:
    text = "10,20,30,40\n" + "".join(f"{i / 10},{i % 3},{i % 2},{(i + 1) % 2}\n" for i in range(24))
    data = _load(tmp_path, text, 'header = true\nlabel_columns = ["30", "40"]')
    assert data.task == "multilabel" and data.class_names == ("30", "40")
    assert data.num_features == 2


def test_header_false_reads_the_first_row_as_data_and_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="line 1, column 1 has a non-numeric cell 'a'"):
        _load(tmp_path, "a,b,label\n" + _rows(), "header = false")
    with pytest.raises(DataError, match="line 26, column 1 has a non-numeric cell 'x'"):
        _load(tmp_path, "1,2,0\n" + _rows() + "x,1,0\n", "header = false")
    with pytest.raises(DataError, match="line 26, column 1 \\(a\\) has a non-numeric"):
        _load(tmp_path, "a,b,label\n" + _rows() + "x,1,0\n", "header = true")


@pytest.mark.parametrize(
    ("value", "needle"),
    [('"true"', "header must be true/false"), ("1", "header must be true/false")],
)
def test_header_must_be_a_boolean(tmp_path: Path, value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _load(tmp_path, _rows(), f"header = {value}")


def test_header_with_only_a_header_row_has_no_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data rows"):
        _load(tmp_path, "a,b,label\n", "header = true")


def test_header_on_non_csv_data_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.zeros(4, dtype=np.int64))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\npath = "d.npz"\nheader = true\n{BASE}')
    with pytest.raises(ConfigError, match="header applies to csv data only"):
        load_config(cfg)


# --- [[policies]] order, now lg.chain's --------------------------------------------------


PN = '[[policies]]\nname = "pos_neg_weights"\npos = 2.0\n'
LA = '[[policies]]\nname = "logit_adjust"\n'
SEESAW = '[[policies]]\nname = "seesaw"\nstart_epoch = 1\n'
CLIP = '[[policies]]\nname = "clip_per_class"\nmax_norm = 1.0\n'
ORDERS = {  # (refused order, what the error says, the order that trains)
    "pos_neg then logit_adjust": (PN + LA, "PosNegWeights comes before it", LA + PN),
    "two replacing": (LA + SEESAW, "both replace the gradient", LA),
    "clip_per_class then scheduled seesaw": (
        CLIP + SEESAW,
        "ClipPerClass comes before it",
        SEESAW + CLIP,
    ),
}


@pytest.mark.parametrize("case", list(ORDERS))
def test_a_replacing_policy_out_of_order_exits_2_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    refused, needle, fixed = ORDERS[case]
    (tmp_path / "d.csv").write_text("a,b,label\n" + _rows(40))
    cfg = tmp_path / "c.toml"
    head = f'[data]\npath = "d.csv"\n{BASE.replace("epochs = 1", "epochs = 2")}'
    cfg.write_text(head + refused)
    out = tmp_path / "out"
    code = main(["train", str(cfg), "--out", str(out), "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert not (out / "checkpoint.pt").exists()  # no training happened
    # Fixed, the same folder takes the run: the refused one left no finished run behind.
    cfg.write_text(head + fixed)
    code = main(["train", str(cfg), "--out", str(out), "--quiet", "--threads", "1"])
    assert code == 0, capsys.readouterr().err


# --- multi-label splits: iterative stratification ----------------------------------------


def _multilabel_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "all unknown": -np.ones((10, 3)),
        "all zero": np.zeros((10, 3)),
        "one positive label": (np.arange(10)[:, None] < 3).astype(float).repeat(2, axis=1) * [1, 0],
        "C=1": (rng.random((20, 1)) < 0.3).astype(float),
        "n=2": np.array([[1.0, 0.0], [0.0, 1.0]]),
        "rows without a positive": np.vstack([np.zeros((5, 3)), np.eye(3)]),
        "partial": np.where(
            rng.random((60, 6)) < 0.1, -1.0, (rng.random((60, 6)) < 0.2).astype(float)
        ),
        "int labels": (rng.random((30, 4)) < 0.3).astype(np.int64),
        "long tail": (rng.random((200, 5)) < [[0.5, 0.2, 0.05, 0.02, 0.01]]).astype(float),
    }


@pytest.mark.parametrize("case", list(_multilabel_cases()))
@pytest.mark.parametrize(
    "fractions", [(0.0, 0.0), (0.2, 0.1), (0.99, 0.0), (0.5, 0.49), (1e-9, 0.0), (0.0, 0.5)]
)
def test_iterative_split_is_a_seeded_partition_of_the_random_split_sizes(case, fractions):
    y = _multilabel_cases()[case]
    tf, vf = fractions
    te, va, tr = split_indices(y, tf, vf, seed=3)
    n = len(y)
    assert np.array_equal(np.sort(np.concatenate([te, va, tr])), np.arange(n))
    n_test = min(n - 1, max(1, round(tf * n)))
    n_val = min(n - n_test - 1, round(vf * n))
    assert (len(te), len(va), len(tr)) == (n_test, n_val, n - n_test - n_val)
    again = split_indices(y, tf, vf, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((te, va, tr), again, strict=True))


def test_iterative_split_spreads_each_label_better_than_the_random_split() -> None:
    """Not exact (a sample placed for a rare label carries its other labels along), but each
    label's share per part is several times closer than the random split of the same sizes."""
    rng = np.random.default_rng(1)
    ours, plain = [], []
    for seed in range(30):
        y = (rng.random((150, 8)) < rng.random(8) * 0.4).astype(float)
        y[rng.random(y.shape) < 0.1] = -1.0
        parts = split_indices(y, 0.2, 0.1, seed=seed)
        perm = np.random.default_rng(seed).permutation(len(y))
        k, v = len(parts[0]), len(parts[1])
        pos = y == 1
        for got, rand in zip(parts, (perm[:k], perm[k : k + v], perm[k + v :]), strict=True):
            share = pos.sum(axis=0) * len(got) / len(y)
            ours.append(np.abs(pos[got].sum(axis=0) - share).mean())
            plain.append(np.abs(pos[rand].sum(axis=0) - share).mean())
    assert np.mean(ours) < 0.5 * np.mean(plain)


# --- resume across the new key ------------------------------------------------------------


def _fingerprint_before_the_header_key(cfg) -> str:
    """TrainConfig.fingerprint as written before ``[data] header`` existed (commit 35c7bb3)."""
    import hashlib
    import json

    payload = {
        "data": {k: v for k, v in cfg.data.items() if k not in ("path", "labels", "header")},
        "model": cfg.model,
        "train": {k: v for k, v in cfg.train.items() if k not in ("epochs", "patience")},
        "policies": cfg.policies,
        "rows": cfg.rows,
        "aggregation": cfg.aggregation,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def test_a_checkpoint_from_before_the_header_key_still_resumes(tmp_path: Path) -> None:
    """The new key entered every config's fingerprint (as None): a checkpoint written before it,
    same config and data, was refused as "written for a different config"."""
    (tmp_path / "d.csv").write_text("a,b,label\n" + _rows())
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\npath = "d.csv"\n{BASE}')
    unset = load_config(cfg)
    assert unset.fingerprint() == _fingerprint_before_the_header_key(unset)
    for value in ("true", "false"):  # set, it is part of the run (it decides the rows)
        cfg.write_text(f'[data]\npath = "d.csv"\nheader = {value}\n{BASE}')
        assert load_config(cfg).fingerprint() != unset.fingerprint()


def test_resume_with_the_header_key_changed_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "d.csv").write_text("1,2,0\n" + _rows())
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\npath = "d.csv"\n{BASE}')
    out = ["--out", str(tmp_path / "out"), "--quiet", "--threads", "1"]
    assert main(["train", str(cfg), *out]) == 0, capsys.readouterr().err
    cfg.write_text(
        f'[data]\npath = "d.csv"\nheader = true\n{BASE.replace("epochs = 1", "epochs = 2")}'
    )
    assert main(["train", str(cfg), *out, "--resume"]) == 2
    assert "different config" in capsys.readouterr().err
