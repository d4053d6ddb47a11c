"""Reading the user's data files: CSV (optionally gzip-compressed), ``.npz`` archives and idx
files (the MNIST format), each checked, with one-line :class:`DataError` messages that name the
file (and, for a CSV, the line).
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CsvTable", "DataError", "csv_header", "read_csv", "read_idx", "read_npz", "read_table"]


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


@dataclass(frozen=True)
class CsvTable:
    """A CSV as :func:`read_table` reads it.

    Attributes:
        features: (N, D) float64, the columns that are not labels.
        labels: (N, L) int64; string labels are indices into ``label_names``.
        label_names: the sorted names of string labels (label k is ``label_names[k]``), or None
            where the labels are numbers.
        header: the column names (a pandas index column left out), or None without a header.
        lines: the file line (from 1) where each data row starts.
        label_columns: the label columns, as indices from 0.
    """

    features: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...] | None
    header: list[str] | None
    lines: list[int]
    label_columns: list[int]


def read_table(
    path: str | os.PathLike[str],
    *,
    label_columns: Sequence[int | str],
    delimiter: str | None = None,
    header: bool | None = None,
) -> CsvTable:
    """Read a CSV in any common dialect: what spreadsheet programs and pandas write by default.

    The file is parsed by the standard library's ``csv`` module: a UTF-8 byte-order mark, CRLF
    line ends, quoted fields (with the delimiter or quotes inside) and a comma, semicolon, tab or
    ``|`` delimiter (sniffed from the first 64 KiB, or ``delimiter``) all read as meant. A header
    row is recognised where a column holds a name above numbers (or the row holds no number); an
    unnamed first header cell marks a pandas index column, which is left out. A single label
    column of names (``cat``, ``dog``) gives classes numbered in sorted name order.

    Args:
        path: the file (optionally .gz).
        label_columns: the label columns: indices (negative from the end) or header names.
        delimiter: the delimiter; None sniffs it.
        header: whether the first row is a header; None tells from the cells.

    Raises:
        DataError: one line naming the file, the line and the column: ragged rows, a feature
            cell that is not a number, labels mixing numbers and names, a label column that is
            not there.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = f.write_text('"x";"y";species\\r\\n0.5;1;setosa\\r\\n1;2;"virginica"\\r\\n')
        >>> t = read_table(f, label_columns=["species"])
        >>> t.features.tolist(), t.labels.tolist(), t.label_names, t.header
        ([[0.5, 1.0], [1.0, 2.0]], [[0], [1]], ('setosa', 'virginica'), ['x', 'y', 'species'])
    """
    file = Path(path)
    names, rows = _rows(file, delimiter, header)
    if not rows:
        raise DataError(f"{file}: no data rows")
    width = len(names) if names is not None else len(rows[0][1])
    for line, cells in rows:
        if len(cells) != width:
            raise DataError(f"{file}: line {line} has {len(cells)} cells, expected {width}")
    cols = _normalize_columns(label_columns, width, names, str(file))
    keep = [j for j in range(width) if j not in cols]
    if not keep:
        # One column in all: no delimiter split every row the same way (ragged rows?).
        hint = "; every row reads as one cell: check [data] delimiter" if width == 1 else ""
        raise DataError(f"{file}: no feature columns left after the label columns{hint}")
    features = _features(file, rows, keep, names)
    labels, label_names = _labels(file, rows, cols, names)
    return CsvTable(features, labels, label_names, names, [n for n, _ in rows], cols)


def read_csv(
    path: str | os.PathLike[str],
    *,
    label_columns: Sequence[int | str],
    header: bool | None = None,
    delimiter: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a numeric CSV into (features float64 (N, D), labels int64 (N, L)).

    :func:`read_table` without the names: string labels come back as their indices.

    Args:
        path: the file (optionally .gz).
        label_columns: the columns that hold labels (negative indices count from the end, or
            header names).
        header: whether the first row is a header; None guesses from the cells.
        delimiter: the delimiter; None sniffs it.

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
    table = read_table(path, label_columns=label_columns, delimiter=delimiter, header=header)
    return table.features, table.labels


def csv_data_lines(
    path: str | os.PathLike[str], *, delimiter: str | None = None, header: bool | None = None
) -> list[int]:
    """The file line number (from 1) of each data row of a CSV, as :func:`read_csv` reads it.

    Errors about a sample name its line: blank lines and a header are not samples. ``header``
    as in :func:`read_csv`.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = f.write_text("a,label\\n0.5,1\\n\\n1.0,0\\n")
        >>> csv_data_lines(f)
        [2, 4]
    """
    return [n for n, _ in _rows(Path(path), delimiter, header)[1]]


def csv_header(path: str | os.PathLike[str], *, delimiter: str | None = None) -> list[str] | None:
    """The column names of a CSV's header row (a pandas index column left out), or None.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = f.write_text("a,b,label\\n0.5,1.5,2\\n")
        >>> csv_header(f)
        ['a', 'b', 'label']
    """
    return _rows(Path(path), delimiter, None)[0]


_DELIMITERS = "\t;|,"
"""The delimiters a CSV may use (what spreadsheet programs and pandas write), in the order that
breaks a tie (a semicolon in every row is a delimiter, a comma may be a decimal comma)."""


def _sniff_delimiter(text: str) -> str:
    """The delimiter that splits the first rows into the most columns, the same number in each.

    ``csv.Sniffer`` guesses from character frequencies and fails on quoted names that hold
    another delimiter; parsing the first rows with each candidate does not.
    """
    sample = text[: 1 << 16]
    if len(sample) < len(text):
        sample = sample[: sample.rfind("\n") + 1] or sample  # whole lines only
    best, best_width = ",", 1
    for candidate in _DELIMITERS:
        reader = csv.reader(io.StringIO(sample), delimiter=candidate)
        try:
            widths = {len(r) for r in itertools.islice((r for r in reader if any(r)), 50)}
        except csv.Error:
            continue
        if len(widths) == 1 and (width := widths.pop()) > best_width:
            best, best_width = candidate, width
    return best


def _rows(
    file: Path, delimiter: str | None, header: bool | None
) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """The header (or None) and the non-blank data rows with the line each starts on."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rt", encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"{file}: cannot read CSV ({err})") from None
    if delimiter is None:
        delimiter = _sniff_delimiter(text)
    dialect: Any = type("Dialect", (csv.excel,), {"delimiter": delimiter})
    rows: list[tuple[int, list[str]]] = []
    reader = csv.reader(io.StringIO(text), dialect)
    start = 1
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((start, [c.strip() for c in cells]))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{file}: line {reader.line_num}: cannot parse CSV ({err})") from None
    if not rows:
        return None, rows
    if header is None:
        header = _is_header(rows[0][1], rows[1][1] if len(rows) > 1 else None)
    if not header:
        return None, rows
    names = rows[0][1]
    rows = rows[1:]
    if names and names[0] == "" and all(len(r) == len(names) for _, r in rows):
        # pandas' to_csv writes its index as an unnamed first column: not a feature.
        names = names[1:]
        rows = [(n, r[1:]) for n, r in rows]
    return names, rows


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _is_header(first: list[str], second: list[str] | None) -> bool:
    """A header holds no number, or a name above a number in some column."""
    numeric = [_is_number(c) for c in first]
    if not any(numeric):
        return True
    if second is None or len(second) != len(first):
        return not all(numeric)
    return any(not a and _is_number(b) for a, b in zip(numeric, second))


def _column(j: int, names: list[str] | None) -> str:
    return f"column {j + 1}" + (f" ({names[j]})" if names is not None else "")


def _features(
    file: Path, rows: list[tuple[int, list[str]]], keep: list[int], names: list[str] | None
) -> np.ndarray:
    cells = [[r[j] for j in keep] for _, r in rows]
    try:
        features = np.array(cells, dtype=np.float64)
    except ValueError:
        for (line, _), row in zip(rows, cells):
            for j, cell in zip(keep, row):
                if not _is_number(cell):
                    raise DataError(
                        f"{file}: line {line}, {_column(j, names)} has a non-numeric cell "
                        f"{cell!r}; features must be numbers (a label or id column? name it in "
                        "[data] label_columns, or drop it)"
                    ) from None
        raise
    if not np.isfinite(features).all():
        raise DataError(f"{file}: features contain NaN or infinity")
    return features


def _labels(
    file: Path, rows: list[tuple[int, list[str]]], cols: list[int], names: list[str] | None
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Numeric labels checked by :func:`label_problem`, or one column of names, numbered."""
    cells = [[r[j] for j in cols] for _, r in rows]
    numeric = np.array([[_is_number(c) for c in row] for row in cells], dtype=bool)
    if numeric.all():
        labels = np.array(cells, dtype=np.float64)
        problem = label_problem(labels)
        if problem is not None:
            (i, j), why = problem
            raise DataError(f"{file}: line {rows[i][0]}, column {cols[j] + 1} {why}")
        return labels.astype(np.int64), None
    i, j = (int(k) for k in np.argwhere(~numeric)[0])
    where = f"{file}: line {rows[i][0]}, {_column(cols[j], names)} has label {cells[i][j]!r}"
    if len(cols) > 1:
        raise DataError(f"{where}; multi-hot label columns hold 0, 1 or -1 (unknown)")
    if numeric.any():
        k = int(np.argmax(numeric[:, 0]))
        raise DataError(
            f"{where}, but line {rows[k][0]} has {cells[k][0]!r}: labels are all numbers or all "
            "class names"
        )
    if any(c[0] == "" for c in cells):
        k = next(n for n, c in enumerate(cells) if c[0] == "")
        raise DataError(f"{file}: line {rows[k][0]}, {_column(cols[0], names)} has no label")
    label_names = tuple(sorted({c[0] for c in cells}))
    index = {name: k for k, name in enumerate(label_names)}
    return np.array([[index[c[0]]] for c in cells], dtype=np.int64), label_names


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


def _normalize_columns(
    columns: Sequence[int | str], width: int, names: list[str] | None, where: str
) -> list[int]:
    out = []
    for c in columns:
        if isinstance(c, str):
            if names is None:
                raise DataError(
                    f"{where}: label column {c!r} is a name, but the file has no header"
                )
            if c not in names:
                raise DataError(f"{where}: no column named {c!r} (columns: {', '.join(names)})")
            if names.count(c) > 1:
                at = [str(j + 1) for j, name in enumerate(names) if name == c]
                raise DataError(
                    f"{where}: {names.count(c)} columns are named {c!r} (columns "
                    f"{', '.join(at)}); give the label column by index"
                )
            out.append(names.index(c))
            continue
        if not -width <= c < width:
            raise DataError(f"{where}: label column {c} out of range for {width} columns")
        out.append(c % width)
    if len(set(out)) != len(out):
        raise DataError(f"{where}: label columns {list(columns)} repeat a column")
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
