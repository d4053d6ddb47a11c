"""Real datasets that work offline, cut for label studies (long tails, hidden labels).

Every loader reads files that are already on the machine (scikit-learn's bundled digits, river's
bundled Yeast, Debian's ``dataset-fashion-mnist``) or a user path; nothing is downloaded. A
missing optional source raises :class:`MissingSourceError` whose message is one line saying how
to install it. Splits are seeded and reproducible.

The long-tailed cut follows the CIFAR-LT protocol (Cao et al., 2019): class c keeps
``n_c = floor(n_max * (1 / IF) ** (c / (C - 1)))`` training samples, class 0 the most and class
C - 1 the fewest; the test split stays balanced.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from labelgrad.app.datafiles import DataError, csv_header, read_csv, read_idx, read_npz

__all__ = [
    "DataError",
    "Dataset",
    "MissingSourceError",
    "csv_header",
    "digits_lt",
    "fashion_mnist_lt",
    "hide_labels",
    "long_tail_counts",
    "read_csv",
    "read_idx",
    "read_npz",
    "yeast",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class MissingSourceError(FileNotFoundError):
    """An optional data source is not installed; the message says how to install it."""


Task = Literal["multiclass", "multilabel"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split as tensors, with what a report needs to name things.

    Attributes:
        name: a short name ("digits-LT IF=10").
        x_train: float32 (N, D) features.
        y_train: multiclass: int64 (N,) class indices; multilabel: int64 (N, C) in {0, 1}
            (-1 = unknown, after :func:`hide_labels`).
        x_test: float32 (M, D).
        y_test: like ``y_train``, every label known.
        class_names: the name of each class, length C.
        task: ``"multiclass"`` or ``"multilabel"``.
        meta: anything else worth reporting (imbalance factor, seed, source path).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: tuple[str, ...]
    task: Task
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """C, the number of classes (labels)."""
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        """D, the number of input features."""
        return int(self.x_train.shape[1])

    def train_counts(self) -> Tensor:
        """Training samples per class (multilabel: known positives per label), int64 (C,)."""
        if self.task == "multiclass":
            return torch.bincount(self.y_train, minlength=self.num_classes)
        return (self.y_train == 1).sum(dim=0)

    def head(self, limit: int | None) -> Dataset:
        """The first ``limit`` training and test samples (all of them for None), for quick runs.

        Example:
            >>> ds = digits_lt(imbalance=10.0, seed=0).head(20)
            >>> len(ds.y_train), len(ds.y_test)
            (20, 20)
        """
        if limit is None:
            return self
        return dataclasses.replace(
            self,
            x_train=self.x_train[:limit],
            y_train=self.y_train[:limit],
            x_test=self.x_test[:limit],
            y_test=self.y_test[:limit],
        )


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Per-class sample counts of the CIFAR-LT protocol.

    Args:
        n_max: the count of the most frequent class (class 0).
        num_classes: C >= 2.
        imbalance: IF = n_0 / n_{C-1} >= 1.

    Example:
        >>> long_tail_counts(100, 3, 100.0)
        [100, 10, 1]
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not imbalance >= 1:
        raise ValueError(f"imbalance must be a number >= 1, got {imbalance!r}")
    # The small epsilon keeps exact powers (100 * 0.1 = 10) from rounding down to 9.
    return [
        max(1, int(n_max * (1.0 / imbalance) ** (c / (num_classes - 1)) + 1e-9))
        for c in range(num_classes)
    ]


def _long_tail_split(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    imbalance: float,
    seed: int,
    test_per_class: int,
    n_max: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(num_classes)]
    smallest = min(len(idx) for idx in by_class)
    if test_per_class >= smallest:
        raise ValueError(
            f"test_per_class must be below the smallest class size {smallest}, got {test_per_class}"
        )
    available = smallest - test_per_class
    counts = long_tail_counts(min(n_max or available, available), num_classes, imbalance)
    test_idx = np.concatenate([idx[:test_per_class] for idx in by_class])
    train_idx = np.concatenate(
        [idx[test_per_class : test_per_class + n] for idx, n in zip(by_class, counts)]
    )
    train_idx = rng.permutation(train_idx)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _tensors(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(x_tr, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y_tr, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(x_te, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y_te, dtype=np.int64)),
    )


def digits_lt(imbalance: float = 10.0, *, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), cut long-tailed.

    The test split takes ``floor(test_fraction * smallest class)`` images of every class
    (balanced, 43 each by default); the rest is cut to the CIFAR-LT counts with
    ``n_max`` = the images left in the smallest class. Features are pixel intensities in [0, 1].

    Args:
        imbalance: IF, the ratio of the largest to the smallest training class (>= 1).
        seed: picks which images land in each split.
        test_fraction: the share of the smallest class held out per class, in (0, 1).

    Example:
        >>> ds = digits_lt(imbalance=10, seed=0)
        >>> ds.train_counts().tolist()
        [131, 101, 78, 60, 47, 36, 28, 21, 16, 13]
        >>> ds.x_test.shape, torch.bincount(ds.y_test).unique().tolist()
        (torch.Size([430, 64]), [43])
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingSourceError(
            "digits_lt needs scikit-learn: pip install 'labelgrad[cli,data]'"
        ) from None
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    smallest = int(np.bincount(y).min())
    parts = _long_tail_split(x, y, 10, imbalance, seed, int(test_fraction * smallest))
    xtr, ytr, xte, yte = _tensors(*parts)
    return Dataset(
        name=f"digits-LT IF={imbalance:g}",
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        class_names=tuple(str(c) for c in range(10)),
        task="multiclass",
        meta={"imbalance": imbalance, "seed": seed, "source": "sklearn.datasets.load_digits"},
    )


def _river_file(name: str) -> Path:
    # find_spec locates the package without importing it (river's import pulls in pandas etc.).
    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        raise MissingSourceError(
            f"{name} needs river's bundled data: pip install 'labelgrad[cli,data]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / name
    if not path.is_file():
        raise MissingSourceError(f"{path} not found: pip install 'river>=0.26.1'")
    return path


def yeast(
    *, seed: int = 0, test_fraction: float = 0.3, path: str | os.PathLike[str] | None = None
) -> Dataset:
    """The Yeast multi-label dataset (2,417 genes x 103 features, 14 functional classes).

    Read with numpy from the csv.gz that river bundles (``river/datasets/yeast.csv.gz``; river
    itself is not imported), or from ``path`` (same format: header, 103 features, 14 0/1 labels).

    Args:
        seed: the seed of the random train/test split.
        test_fraction: the share of samples held out, in (0, 1).
        path: another copy of the file.

    Example:
        >>> ds = yeast(seed=0)
        >>> ds.x_train.shape[1], ds.num_classes, len(ds.x_train) + len(ds.x_test)
        (103, 14, 2417)
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    file = Path(path) if path is not None else _river_file("yeast.csv.gz")
    if not file.is_file():
        raise MissingSourceError(f"{file} not found")
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rt") as fh:
            header = fh.readline().strip().split(",")
            data = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{file}: not a readable Yeast csv ({err})") from None
    if data.shape[1] != 117 or len(header) != 117:
        raise DataError(f"{file}: expected 117 columns (103 features, 14 labels), got {data.shape}")
    x, y = data[:, :103], data[:, 103:]
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"{file}: label columns must hold 0 or 1")
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = round(test_fraction * len(x))
    te, tr = perm[:n_test], perm[n_test:]
    xtr, ytr, xte, yte = _tensors(x[tr], y[tr], x[te], y[te])
    return Dataset(
        name="Yeast",
        x_train=xtr,
        y_train=ytr,
        x_test=xte,
        y_test=yte,
        class_names=tuple(header[103:]),
        task="multilabel",
        meta={"seed": seed, "source": str(file)},
    )


def fashion_mnist_lt(
    imbalance: float = 100.0,
    *,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    n_max: int | None = None,
    test_per_class: int | None = None,
) -> Dataset:
    """Fashion-MNIST (70,000 28x28 images, 10 classes) from local idx files, cut long-tailed.

    Reads ``train-images-idx3-ubyte.gz`` and friends from ``root`` (default
    ``/usr/share/datasets/fashion-mnist``, installed by Debian's ``dataset-fashion-mnist``).
    The training split is cut to CIFAR-LT counts (``n_max`` images for class 0, default all
    6,000); the test split is the official one, optionally cut to ``test_per_class`` per class.
    Features are flattened pixels in [0, 1].

    Args:
        imbalance: IF >= 1.
        seed: picks which training images are kept.
        root: the folder holding the four idx .gz files.
        n_max: the size of the largest training class.
        test_per_class: keep only this many test images per class (balanced).

    Example:
        >>> ds = fashion_mnist_lt(100, n_max=500, test_per_class=10)  # doctest: +SKIP
        >>> ds.train_counts().tolist()  # doctest: +SKIP
        [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    """
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    names = {
        "xtr": "train-images-idx3-ubyte.gz",
        "ytr": "train-labels-idx1-ubyte.gz",
        "xte": "t10k-images-idx3-ubyte.gz",
        "yte": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [n for n in names.values() if not (folder / n).is_file()]
    if missing:
        hint = "sudo apt-get install dataset-fashion-mnist" if root is None else "check root="
        raise MissingSourceError(f"Fashion-MNIST not found in {folder} ({missing[0]}): {hint}")
    arrays = {k: read_idx(folder / n) for k, n in names.items()}
    for split in ("tr", "te"):
        if len(arrays["x" + split]) != len(arrays["y" + split]):
            raise DataError(f"{folder}: image and label files of a split differ in length")
        if arrays["y" + split].max(initial=0) > 9:
            raise DataError(f"{folder}: labels out of range 0..9")
    xtr = arrays["xtr"].reshape(len(arrays["xtr"]), -1)
    xte = arrays["xte"].reshape(len(arrays["xte"]), -1)
    ytr, yte = arrays["ytr"].astype(np.int64), arrays["yte"].astype(np.int64)
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(ytr == c)) for c in range(10)]
    top = min(len(i) for i in by_class)
    counts = long_tail_counts(min(n_max or top, top), 10, imbalance)
    keep = rng.permutation(np.concatenate([i[:n] for i, n in zip(by_class, counts)]))
    if test_per_class is not None:
        test_keep = np.concatenate(
            [rng.permutation(np.flatnonzero(yte == c))[:test_per_class] for c in range(10)]
        )
        xte, yte = xte[test_keep], yte[test_keep]
    tensors = _tensors(xtr[keep] / 255.0, ytr[keep], xte / 255.0, yte)
    return Dataset(
        name=f"Fashion-MNIST-LT IF={imbalance:g}",
        x_train=tensors[0],
        y_train=tensors[1],
        x_test=tensors[2],
        y_test=tensors[3],
        class_names=FASHION_MNIST_CLASSES,
        task="multiclass",
        meta={"imbalance": imbalance, "seed": seed, "source": str(folder)},
    )


def hide_labels(y: Tensor, fraction: float, *, seed: int = 0) -> Tensor:
    """Mark a random ``fraction`` of the entries of multi-hot labels unknown (-1).

    For studying partial labels: train on the result with :func:`labelgrad.mask_unknown`, or
    treat unknowns as negatives to see what that costs. Entries already unknown stay unknown.

    Args:
        y: (N, C) multi-hot labels in {0, 1} (or -1), any integer or float dtype.
        fraction: the share of entries to hide, in [0, 1].
        seed: the seed of the choice (a private generator; the global RNG is untouched).

    Returns:
        A copy of ``y`` with the hidden entries set to -1.

    Example:
        >>> y = torch.ones(4, 5, dtype=torch.long)
        >>> h = hide_labels(y, 0.5, seed=0)
        >>> int((h == -1).sum())
        10
    """
    if y.dim() != 2:
        raise ValueError(f"y must be (N, C) multi-hot labels, got shape {tuple(y.shape)}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    gen = torch.Generator().manual_seed(seed)
    n = y.numel()
    hidden = torch.zeros(n, dtype=torch.bool)
    hidden[torch.randperm(n, generator=gen)[: round(fraction * n)]] = True
    out = y.clone()
    out[hidden.view_as(y).to(y.device)] = -1
    return out
