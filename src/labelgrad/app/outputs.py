"""The output folder of a command (``demo``, ``train``, ``bench``): one guard, checked before any
work, and the manifest that says which files a run wrote.

:func:`claim_output` refuses (one line, exit 2) an empty ``--out``, a path that is a file, a
folder that cannot be written, a file name the run writes that exists there as a folder, and a
folder holding another run (another command, or other settings) unless ``--force`` (or, for
``train``, ``--resume``) is given. A new run removes the files the previous run's manifest lists,
so files of an earlier run never survive next to a new one; :func:`record_output` writes the
manifest of the files this run wrote (and removes the previous run's files it did not rewrite).
The user's other files in the folder are never touched.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labelgrad.report import atomic_write_text, check_writable_dir

__all__ = ["DEFAULT_OUT", "MANIFEST", "OutputError", "claim_output", "record_output"]

MANIFEST = "labelgrad-run.json"
"""The manifest of a run: the command, its settings' identity, its state and its files."""

DEFAULT_OUT = {"demo": "labelgrad-out/demo", "train": "labelgrad-out/train"}
"""Each command's default ``--out``: one run per folder, never two commands' files mixed."""


class OutputError(RuntimeError):
    """The output folder cannot take this run, or a file could not be written (a full disk);
    the command exits 2 with this one-line message."""


def claim_output(
    out: str | os.PathLike[str],
    command: str,
    identity: str,
    files: Sequence[str],
    *,
    force: bool = False,
    resume: bool = False,
) -> Path:
    """Check ``out`` for a run of ``command``, create it, and clear the previous run's files.

    Args:
        out: the ``--out`` value.
        command: the command ("demo", "train", "bench", "outcomes").
        identity: the run's settings (a run with the same command and identity may replace
            its own earlier output: it writes the same files again).
        files: the names (``fnmatch`` patterns) the command may write: an existing folder by
            one of these names is refused, and such files without a manifest count as a run.
        force: replace another run's files.
        resume: continue the run in the folder (its files are kept; ``train`` only).

    Returns:
        The folder, created and checked writable, holding a manifest of a running run.

    Raises:
        OutputError: one line naming ``--out`` and what to do.
        PermissionError: the folder cannot be created or written.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> folder = claim_output(d / "run", "demo", "seed 0", ["report.html"])
        >>> record_output(folder, ["report.html"])
        >>> claim_output(d / "run", "train", "c.toml", ["report.html"])
        Traceback (most recent call last):
        ...
        labelgrad.app.outputs.OutputError: --out ... holds a finished `labelgrad demo` run ...
    """
    text = os.fspath(out)
    if not text.strip():
        raise OutputError("--out must name a folder, got an empty string (use --out . for here)")
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder} is a file; expected a folder (new or of this command)")
    previous: list[str] = []
    if folder.is_dir():
        previous = _check_previous(folder, command, identity, files, force=force, resume=resume)
        for entry in sorted(folder.iterdir()):
            if entry.is_dir() and _matches(entry.name, files):
                raise OutputError(
                    f"--out {folder}: {entry.name} is a folder there, but this run writes a file "
                    "of that name (move it away or choose another --out)"
                )
    try:
        check_writable_dir(folder)
    except PermissionError as err:
        raise PermissionError(f"--out: {err}") from None
    if not resume:
        _remove(folder, previous)
        previous = []
    _write(folder, {"command": command, "identity": identity, "state": "running"}, previous)
    return folder


def record_output(folder: Path, files: Sequence[str]) -> None:
    """Write the manifest of the files this run wrote; remove those of the run before it.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> folder = claim_output(d, "bench", "quick", ["bench.json"])
        >>> _ = (d / "bench.json").write_text("{}")
        >>> record_output(folder, ["bench.json"])
        >>> json.loads((d / MANIFEST).read_text())["files"]
        ['bench.json']
    """
    manifest = _read(folder) or {}
    stale = [f for f in manifest.get("files", []) if f not in files]
    _remove(folder, stale)
    manifest["state"] = "finished"
    _write(folder, manifest, list(files))


def _check_previous(
    folder: Path,
    command: str,
    identity: str,
    files: Sequence[str],
    *,
    force: bool,
    resume: bool,
) -> list[str]:
    """The files of the run already in ``folder`` (refused unless it may be replaced)."""
    manifest = _read(folder)
    if manifest is None:
        # No manifest: files by this command's names are an earlier (or foreign) run's.
        found = sorted(e.name for e in folder.iterdir() if e.is_file() and _matches(e.name, files))
        if found and not (force or resume):
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise OutputError(
                f"--out {folder} already holds {shown} (from another run); pass --force to "
                "replace them or choose another --out"
            )
        return found
    listed = [f for f in manifest.get("files", []) if isinstance(f, str)]
    present = [e.name for e in folder.iterdir() if e.is_file() and _matches(e.name, files)]
    if manifest.get("state") == "running" and not present and not listed:
        return []  # a run that stopped before writing anything (a refused config, say)
    was = f"`labelgrad {manifest.get('command')}` run"
    state = "an unfinished" if manifest.get("state") == "running" else "a finished"
    if resume:
        if manifest.get("command") != command:
            raise OutputError(f"--out {folder} holds {state} {was}; --resume continues {command}")
    elif not force and (manifest.get("command"), manifest.get("identity")) != (command, identity):
        hint = " or --resume to continue it" if command == "train" else ""
        raise OutputError(
            f"--out {folder} holds {state} {was} with other settings; pass --force to replace "
            f"it{hint}, or choose another --out"
        )
    return [*listed, *(f for f in present if f not in listed)]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _read(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise OutputError(
            f"--out {folder}: {MANIFEST} is not a labelgrad manifest (remove it, or choose "
            "another --out)"
        ) from None
    if not isinstance(data, dict):
        raise OutputError(f"--out {folder}: {MANIFEST} is not a labelgrad manifest")
    return data


def _remove(folder: Path, names: Sequence[str]) -> None:
    """Remove the plain files ``names`` in ``folder`` (a name with a path part is ignored)."""
    for name in names:
        if not name or Path(name).name != name or name in (".", ".."):
            continue
        path = folder / name
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _write(folder: Path, manifest: dict[str, Any], files: list[str]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps({**manifest, "files": files}, indent=1) + "\n")
