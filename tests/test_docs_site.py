"""The built documentation site opens from disk: every link of every page reaches a file.

Opened over ``file://`` (no server), a link to a folder shows the folder's listing instead of
its ``index.html``, and a missing file shows an error page. The site is built once, into a
temporary folder, with the same command as ``make docs`` (a few seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).parents[1]


class _Links(HTMLParser):
    """The ``href`` / ``src`` values and the element ids of one page.

    Links inside a ``repo-only`` element are left out: the site hides that element (it points
    readers of the repository page to a file there, such as ../CHANGELOG.md).
    """

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self._hidden: str | None = None  # the tag of the repo-only element we are in

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if "repo-only" in (dict(attrs).get("class") or "").split():
            self._hidden = tag
        for key, value in attrs:
            if self._hidden and key in {"href", "src"}:
                continue
            if value is None:
                continue
            if key in {"href", "src"}:
                self.links.append(value)
            elif key in {"id", "name"}:
                self.ids.add(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._hidden:
            self._hidden = None


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _local_target(page: Path, link: str) -> tuple[Path, str] | None:
    """The file a relative link opens over file://, and its fragment; None for other links."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith("/"):
        return None  # another site, or mailto:/data: (none of them is a file of this site)
    if not parts.path:
        return page, unquote(parts.fragment)  # "#anchor" on the page itself
    return (page.parent / unquote(parts.path)), unquote(parts.fragment)


def test_every_relative_link_opens_a_file(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20, f"only {len(pages)} pages built"
    ids: dict[Path, set[str]] = {}
    broken: list[str] = []
    for page in pages:
        for link in _parse(page).links:
            target = _local_target(page, link)
            if target is None:
                continue
            path, fragment = target
            where = f"{page.relative_to(site)}: {link}"
            if not path.is_file():
                kind = "a folder" if path.is_dir() else "missing"
                broken.append(f"{where} ({kind})")
            elif fragment and path.suffix == ".html":
                if path not in ids:
                    ids[path] = _parse(path).ids
                if fragment not in ids[path]:
                    broken.append(f"{where} (no id {fragment!r})")
    assert not broken, "links that do not open over file://:\n" + "\n".join(broken)


def test_search_works_from_disk(site: Path) -> None:
    """A page opened over file:// cannot fetch search_index.json; it loads this script instead."""
    script = site / "search" / "search_index.js"
    assert script.is_file(), "add the `offline` plugin to mkdocs.yml"
    assert script.read_text(encoding="utf-8").startswith("var __index = {")


def test_the_link_check_finds_a_folder_link(tmp_path: Path) -> None:
    """The check above can fail: a directory URL (what mkdocs writes by default) is caught."""
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "index.html").write_text("<p id='x'>guide</p>")
    page = tmp_path / "index.html"
    page.write_text(
        "<a href='guides/'>a</a><p class='repo-only'><a href='../X.md'>c</a></p>"
        "<a href='guides/index.html#x'>b</a>"
    )
    opened = [_local_target(page, link) for link in _parse(page).links]
    assert len(opened) == 2  # the hidden repo-only link is not checked
    assert opened[0] is not None and opened[0][0].is_dir()
    assert opened[1] is not None and opened[1][0].is_file() and opened[1][1] == "x"
    assert _local_target(page, "mailto:someone") is None
    assert _local_target(page, "//elsewhere/shim.js") is None
