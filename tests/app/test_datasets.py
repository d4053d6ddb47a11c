"""Offline dataset loaders: counts follow the CIFAR-LT formula, splits are seeded, bad files fail
with clear errors, optional sources skip with a reason."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labelgrad.app.datasets import (
    DataError,
    MissingSourceError,
    digits_lt,
    fashion_mnist_lt,
    hide_labels,
    long_tail_counts,
    read_csv,
    read_idx,
    read_npz,
    yeast,
)

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(
    not FASHION.exists(),
    reason="Debian's dataset-fashion-mnist is not installed "
    "(apt-get install dataset-fashion-mnist)",
)
needs_river = pytest.mark.skipif(
    importlib.util.find_spec("river") is None, reason="river (extra 'data') is not installed"
)


def test_long_tail_counts_formula() -> None:
    counts = long_tail_counts(131, 10, 100.0)
    expected = [int(131 * 0.01 ** (c / 9) + 1e-9) for c in range(10)]
    assert counts == expected
    assert counts[0] == 131
    assert counts[-1] == 1
    assert long_tail_counts(50, 4, 1.0) == [50] * 4
    with pytest.raises(ValueError, match="imbalance"):
        long_tail_counts(10, 3, 0.5)


@pytest.mark.parametrize("imbalance", [10.0, 100.0])
def test_digits_lt_counts_and_balanced_test(imbalance: float) -> None:
    ds = digits_lt(imbalance=imbalance, seed=1)
    counts = ds.train_counts().tolist()
    assert counts == long_tail_counts(counts[0], 10, imbalance)
    assert counts[0] / counts[-1] == pytest.approx(imbalance, rel=0.35)
    test_counts = torch.bincount(ds.y_test, minlength=10)
    assert torch.equal(test_counts, torch.full((10,), 43))
    assert ds.x_train.dtype == torch.float32
    assert float(ds.x_train.min()) >= 0
    assert float(ds.x_train.max()) <= 1.0
    assert ds.task == "multiclass"
    assert ds.num_classes == 10
    assert ds.num_features == 64


def test_digits_lt_split_is_seeded_and_disjoint() -> None:
    from sklearn.datasets import load_digits

    a, b, c = digits_lt(10, seed=3), digits_lt(10, seed=3), digits_lt(10, seed=4)
    assert torch.equal(a.x_train, b.x_train)
    assert torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    # Every sample comes from the bundled set, and no image index is used twice.
    full = torch.from_numpy(load_digits().data.astype(np.float32) / 16.0)
    both = torch.cat([a.x_train, a.x_test])
    idx = (both[:, None, :] == full[None]).all(-1).float().argmax(1)
    assert (both == full[idx]).all()
    dup_free = (full[:, None, :] == full[None]).all(-1).sum(1) == 1  # images without twins
    unique_idx = idx[dup_free[idx]]
    assert len(unique_idx.unique()) == len(unique_idx)


def test_digits_lt_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        digits_lt(10, test_fraction=1.5)


@needs_river
def test_yeast_matches_the_csv_read_independently() -> None:
    ds = yeast(seed=0)
    assert ds.num_classes == 14
    assert ds.num_features == 103
    assert ds.task == "multilabel"
    assert len(ds.x_train) + len(ds.x_test) == 2417
    assert len(ds.x_test) == round(0.3 * 2417)
    spec = importlib.util.find_spec("river")
    assert spec is not None
    assert spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "yeast.csv.gz"
    with gzip.open(path, "rt") as fh:
        rows = list(csv.reader(fh))
    labels = torch.tensor([[int(v) for v in r[103:]] for r in rows[1:]])
    both = torch.cat([ds.y_train, ds.y_test])
    assert torch.equal(both.sum(0), labels.sum(0))
    assert set(torch.unique(both).tolist()) == {0, 1}
    assert ds.class_names == tuple(rows[0][103:])


@needs_river
def test_yeast_does_not_import_river() -> None:
    code = "import sys, labelgrad.app.datasets as d; d.yeast(); print('river' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_yeast_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MissingSourceError, match="not found"):
        yeast(path=tmp_path / "absent.csv.gz")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="117 columns"):
        yeast(path=bad)
    bad.write_text("a,b\n1,x\n")
    with pytest.raises(DataError, match="not a readable"):
        yeast(path=bad)


@needs_fashion
def test_fashion_mnist_lt_counts() -> None:
    ds = fashion_mnist_lt(100, n_max=300, test_per_class=5, seed=0)
    assert ds.train_counts().tolist() == long_tail_counts(300, 10, 100)
    assert torch.equal(torch.bincount(ds.y_test), torch.full((10,), 5))
    assert ds.num_features == 784
    assert float(ds.x_train.max()) <= 1.0
    assert read_idx(FASHION).shape == (60000, 28, 28)


def test_fashion_mnist_missing_root_says_how(tmp_path: Path) -> None:
    with pytest.raises(MissingSourceError, match="check root") as err:
        fashion_mnist_lt(root=tmp_path)
    assert "\n" not in str(err.value)


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_read_idx_round_trip_and_corruption(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(a, 0x08))
    with gzip.open(tmp_path / "f.idx.gz", "wb") as fh:
        fh.write(_idx_bytes(f, 0x0D))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), a)
    assert np.array_equal(read_idx(tmp_path / "f.idx.gz"), f)
    (tmp_path / "trunc.idx").write_bytes(_idx_bytes(a, 0x08)[:-3])
    with pytest.raises(DataError, match="declares shape"):
        read_idx(tmp_path / "trunc.idx")
    (tmp_path / "magic.idx").write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "magic.idx")
    (tmp_path / "badgz.idx.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "badgz.idx.gz")


def test_hide_labels() -> None:
    y = torch.randint(0, 2, (50, 6))
    h = hide_labels(y, 0.5, seed=7)
    assert int((h == -1).sum()) == 150
    assert torch.equal(h[h != -1], y[h != -1])  # the rest is untouched
    assert torch.equal(h, hide_labels(y, 0.5, seed=7))
    assert not torch.equal(h, hide_labels(y, 0.5, seed=8))
    assert torch.equal(hide_labels(y, 0.0), y)
    assert bool((hide_labels(y, 1.0) == -1).all())
    assert int((y == -1).sum()) == 0  # input not modified
    with pytest.raises(ValueError, match="fraction"):
        hide_labels(y, 1.5)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        hide_labels(torch.zeros(5, dtype=torch.long), 0.5)


def test_read_csv(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("f1,f2,label\n0.5,1,2\n1.5,-2,0\n")
    x, y = read_csv(p, label_columns=[-1])
    assert x.tolist() == [[0.5, 1.0], [1.5, -2.0]]
    assert y.tolist() == [[2], [0]]
    p.write_text("1,2,3\n4,5\n")
    with pytest.raises(DataError, match="line 2 has 2 cells"):
        read_csv(p, label_columns=[-1])
    p.write_text("1,2,3\n4,abc,6\n")
    with pytest.raises(DataError, match="non-numeric"):
        read_csv(p, label_columns=[-1])
    p.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="label column 5 out of range"):
        read_csv(p, label_columns=[5])
    p.write_text("1,2,0.5\n")
    with pytest.raises(DataError, match="integers"):
        read_csv(p, label_columns=[2])


def test_read_npz(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((3, 2, 2)), y=np.arange(3))
    x, y = read_npz(p)
    assert x.shape == (3, 4)
    assert y.tolist() == [0, 1, 2]
    np.savez(p, features=np.ones(3))
    with pytest.raises(DataError, match="needs arrays"):
        read_npz(p)
    p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read npz"):
        read_npz(p)


def test_read_npz_closes_a_corrupt_archive(tmp_path: Path) -> None:
    # np.load leaks its file handle when the zip is corrupt; read_npz owns the handle instead.
    import gc
    import warnings

    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((4, 2)), y=np.arange(4))
    p.write_bytes(p.read_bytes()[:100])  # a truncated archive
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="cannot read npz"):
            read_npz(p)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
