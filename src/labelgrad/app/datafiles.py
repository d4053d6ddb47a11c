"""Reading the user's data files: CSV (optionally gzip-compressed), ``.npz`` archives and idx
files (the MNIST format), each checked, with one-line :class:`DataError` messages that name the
file (and, for a CSV, the line).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["DataError", "csv_header", "read_csv", "read_idx", "read_npz"]


class DataError(ValueError):
    """A data file or an argument describing data is invalid (corrupt file, labels out of range)."""


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (the MNIST format), gzip-compressed or not, into a numpy array.

    Raises:
        DataError: the file is truncated, has a bad magic number or a size that does not match
            its header.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.idx"
        >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(p).tolist()
        [7, 8, 9]
    """
    file = Path(path)
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with gzip.open(file, "rb") if file.suffix == ".gz" else open(file, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{file}: cannot read idx file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise DataError(f"{file}: not an idx file (bad magic number)")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{file}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[raw[2]])
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise DataError(
            f"{file}: idx header declares shape {shape} ({expected} bytes), file has {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_csv(
    path: str | os.PathLike[str], *, label_columns: list[int], header: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a numeric CSV into (features float64 (N, D), labels int64 (N, L)).

    Args:
        path: the file (optionally .gz).
        label_columns: the columns that hold labels (negative indices count from the end).
        header: whether the first row is a header; None guesses from whether it parses as numbers.

    Raises:
        DataError: unreadable or ragged rows, non-numeric cells, non-integer labels, a label
            column out of range.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = f.write_text("a,b,label\\n0.5,1.5,2\\n1.0,2.0,0\\n")
        >>> x, y = read_csv(f, label_columns=[-1])
        >>> x.tolist(), y.tolist()
        ([[0.5, 1.5], [1.0, 2.0]], [[2], [0]])
    """
    file = Path(path)
    lines = _numbered_lines(file)
    if header is None:
        header = _has_header(lines)
    rows = lines[1:] if header else lines
    if not rows:
        raise DataError(f"{file}: no data rows")
    width = len(rows[0][1].split(","))
    data = np.empty((len(rows), width), dtype=np.float64)
    for i, (line, row) in enumerate(rows):
        cells = row.split(",")
        if len(cells) != width:
            raise DataError(f"{file}: line {line} has {len(cells)} cells, expected {width}")
        try:
            data[i] = [float(v) for v in cells]
        except ValueError:
            raise DataError(f"{file}: line {line} has a non-numeric cell") from None
    cols = _normalize_columns(label_columns, width, str(file))
    labels = data[:, cols]
    problem = label_problem(labels)
    if problem is not None:
        (i, j), why = problem
        raise DataError(f"{file}: line {rows[i][0]}, column {cols[j] + 1} {why}")
    features = np.delete(data, cols, axis=1)
    if features.shape[1] == 0:
        raise DataError(f"{file}: no feature columns left after the label columns")
    if not np.isfinite(features).all():
        raise DataError(f"{file}: features contain NaN or infinity")
    return features, labels.astype(np.int64)


def csv_data_lines(path: str | os.PathLike[str]) -> list[int]:
    """The file line number (from 1) of each data row of a CSV, as :func:`read_csv` reads it.

    Errors about a sample name its line: blank lines and a header are not samples.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = f.write_text("a,label\\n0.5,1\\n\\n1.0,0\\n")
        >>> csv_data_lines(f)
        [2, 4]
    """
    lines = _numbered_lines(Path(path))
    return [n for n, _ in (lines[1:] if _has_header(lines) else lines)]


def _has_header(lines: list[tuple[int, str]]) -> bool:
    """Whether the first non-blank line is a header (a cell that is not a number)."""
    try:
        [float(v) for v in lines[0][1].split(",")] if lines else []
    except ValueError:
        return True
    return False


def _numbered_lines(file: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a CSV with their line numbers (from 1)."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rt", encoding="utf-8-sig") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"{file}: cannot read CSV ({err})") from None
    return [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]


MAX_LABEL = 2**53
"""Labels read as floats must be integers below this in magnitude (beyond it float64 cannot
tell neighbouring integers apart, and int64 conversion would be meaningless)."""


def label_problem(labels: np.ndarray) -> tuple[tuple[int, ...], str] | None:
    """The index of the first label that is not a usable integer, and why; None if all are.

    Example:
        >>> label_problem(np.array([0.0, 5.5, 1e300]))
        ((1,), 'has label 5.5; labels must be integers')
        >>> label_problem(np.array([[0.0], [1e300]]))
        ((1, 0), 'has label 1e+300; labels must be integers of magnitude below 2**53')
        >>> label_problem(np.array([1, 2])) is None
        True
    """
    if labels.dtype.kind in "biu":
        # uint64 beyond int64 would wrap to a negative label.
        big = np.argwhere(labels >= 2**63) if labels.dtype == np.uint64 else np.empty((0, 1))
        if len(big):
            index = tuple(int(k) for k in big[0])
            return index, f"has label {int(labels[index])}; labels must be integers below 2**63"
        return None
    finite = np.isfinite(labels)
    integral = finite & (labels == np.round(np.where(finite, labels, 0.0)))
    small = integral & (np.abs(np.where(integral, labels, 0.0)) < MAX_LABEL)
    if small.all():
        return None
    index = tuple(int(k) for k in np.argwhere(~small)[0])
    value = float(labels[index])
    if not integral[index]:
        return index, f"has label {value!r}; labels must be integers"
    return index, f"has label {value!r}; labels must be integers of magnitude below 2**53"


def csv_header(path: str | os.PathLike[str]) -> list[str] | None:
    """The column names of a CSV's first row, or None where it holds numbers (no header).

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = f.write_text("a,b,label\\n0.5,1.5,2\\n")
        >>> csv_header(f)
        ['a', 'b', 'label']
    """
    file = Path(path)
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rt", encoding="utf-8-sig") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"{file}: cannot read CSV ({err})") from None
    cells = [c.strip() for c in first.strip().split(",")]
    try:
        [float(v) for v in cells]
    except ValueError:
        return cells
    return None


def _normalize_columns(columns: list[int], width: int, where: str) -> list[int]:
    out = []
    for c in columns:
        if not -width <= c < width:
            raise DataError(f"{where}: label column {c} out of range for {width} columns")
        out.append(c % width)
    if len(set(out)) != len(out):
        raise DataError(f"{where}: label columns {columns} repeat a column")
    return out


def read_npz(
    path: str | os.PathLike[str], *, x_key: str = "x", y_key: str = "y"
) -> tuple[np.ndarray, np.ndarray]:
    """Read features and labels from an ``.npz`` archive (loaded with ``allow_pickle=False``).

    Raises:
        DataError: unreadable or corrupt archive (naming the file), missing keys, 0-d, complex
            or non-numeric arrays, no feature columns, or arrays of mismatched length.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.npz"
        >>> np.savez(f, x=np.zeros((3, 2, 2)), y=np.array([0, 1, 1]))
        >>> x, y = read_npz(f)
        >>> x.shape, y.tolist()
        ((3, 4), [0, 1, 1])
    """
    file = Path(path)
    try:
        # Our own handle: np.load leaks the one it opens when the zip is corrupt.
        with open(file, "rb") as fh, np.load(fh, allow_pickle=False) as archive:
            for which, key in (("x_key", x_key), ("y_key", y_key)):
                if key not in archive:
                    raise DataError(
                        f"{file}: needs arrays {x_key!r} and {y_key!r}, has "
                        f"{sorted(archive.files)} (no {key!r}: [data] {which})"
                    )
            x, y = archive[x_key], archive[y_key]
    except DataError:
        raise
    except Exception as err:  # zipfile.BadZipFile, zlib.error, OSError, ValueError, ...
        raise DataError(f"{file}: cannot read npz ({type(err).__name__}: {err})") from None
    for key, a in ((x_key, x), (y_key, y)):
        if a.ndim == 0:
            raise DataError(f"{file}: array {key!r} is 0-d (a scalar); expected one row per sample")
        if a.dtype.kind == "c":
            raise DataError(f"{file}: array {key!r} is complex; expected real numbers")
        if a.dtype.kind not in "biuf":
            raise DataError(f"{file}: array {key!r} must be numeric, got dtype {a.dtype}")
    if len(x) != len(y):
        raise DataError(f"{file}: {x_key} has {len(x)} rows but {y_key} has {len(y)}")
    if len(x) == 0:
        raise DataError(f"{file}: array {x_key!r} has no rows")
    if x[0].size == 0:
        raise DataError(f"{file}: array {x_key!r} has no feature columns (shape {x.shape})")
    return x.reshape(len(x), -1).astype(np.float64), y
