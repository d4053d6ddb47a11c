"""docs/architecture.md names real places: every module path it cites exists.

The page says where to add a policy, an engine, an aggregator, a wrapper and an optimizer fast
path; a rename that leaves it pointing at a file that is gone would send a maintainer astray.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "labelgrad"
PAGE = ROOT / "docs" / "architecture.md"


def _cited_paths(text: str) -> set[str]:
    # `engines/protocol.py`, `rows/families/`, `aggregators/registry.py`, `policy.py`, ...
    return set(re.findall(r"`([\w/]+(?:\.py|/))`", text))


def _exists(cited: str) -> bool:
    if cited.startswith("torch/"):
        return True  # torch's own source, cited as the model to follow
    if cited.startswith("tests/"):
        return (ROOT / cited).exists()
    # A path is relative to src/labelgrad, possibly from any package (`engines/_shared.py`).
    return any(p.as_posix().endswith(cited.rstrip("/")) for p in SRC.rglob("*"))


def test_every_cited_module_path_exists() -> None:
    cited = _cited_paths(PAGE.read_text(encoding="utf-8"))
    assert len(cited) > 20  # the scan still finds the page's paths
    missing = sorted(c for c in cited if not _exists(c))
    assert not missing, f"docs/architecture.md cites paths that do not exist: {missing}"


def test_the_scan_catches_a_stale_path() -> None:
    assert not _exists("rows/_fast.py")
    assert _exists("rows/families/")
