"""One version, read from one place: the package, the command, the changelog and the metadata."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import labelgrad as lg
from labelgrad import _version

ROOT = Path(__file__).resolve().parents[1]


def test_package_version_is_the_single_source() -> None:
    assert lg.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|rc\d+)?", lg.__version__)


def test_metadata_reads_the_version_module() -> None:
    # Text, not tomllib: the tests also run on Python 3.10.
    text = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=\s*\"", text, re.M)
    assert re.search(r'^dynamic = \["version"\]$', text, re.M)
    assert 'version = { attr = "labelgrad._version.__version__" }' in text


def test_command_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    from labelgrad.app.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"labelgrad {lg.__version__}"


def test_changelog_has_a_section_for_this_version() -> None:
    release = re.match(r"\d+\.\d+\.\d+", lg.__version__)
    assert release is not None
    text = (ROOT / "CHANGELOG.md").read_text()
    if "dev" in lg.__version__:
        # A development version: the "Unreleased" section names the release it becomes.
        assert f"## [Unreleased] ({release.group()})" in text
    else:
        assert re.search(rf"^## \[{re.escape(lg.__version__)}\] - \d{{4}}-\d\d-\d\d$", text, re.M)


def test_no_module_spells_a_version_of_its_own() -> None:
    # Reports and the command read lg.__version__; a literal elsewhere would drift.
    for path in (ROOT / "src" / "labelgrad").rglob("*.py"):
        if path.name == "_version.py":
            continue
        assert not re.search(r"""["']\d+\.\d+\.\d+["']""", path.read_text()), path
