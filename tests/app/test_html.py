"""The application's static HTML report."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelgrad.app.html import Section, write_report


def test_report_refuses_missing_images(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        write_report(tmp_path / "r.html", "t", [Section("s", images=["nope.png"])])
    assert not (tmp_path / "r.html").exists()
    (tmp_path / "ok.png").write_bytes(b"\x89PNG")
    write_report(tmp_path / "r.html", "<t>", [Section("s", ["a & b"], images=["ok.png"])])
    text = (tmp_path / "r.html").read_text()
    assert "&lt;t&gt;" in text
    assert "a &amp; b" in text
    assert 'src="ok.png"' in text
