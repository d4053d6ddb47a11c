"""The application's modules stay small enough to read: one job each, none over 500 lines, and
no module name that the library (or another application module) also uses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "labelgrad"
MAX_LINES = 500


def test_no_application_module_is_over_500_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in (SRC / "app").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def test_application_module_names_are_unique() -> None:
    names = Counter(p.name for p in SRC.rglob("*.py") if p.name != "__init__.py")
    clash = sorted(p.name for p in (SRC / "app").rglob("*.py") if names[p.name] > 1)
    assert not clash, f"application modules whose file name is used twice: {clash}"
