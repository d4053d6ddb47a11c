"""A self-contained static HTML report: tables and PNG figures, no scripts."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labelgrad.report import atomic_write_text

__all__ = ["Section", "write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5rem 0; }
.note { color: #555; font-size: 0.9rem; }
"""


@dataclass
class Section:
    """One section of the report.

    Attributes:
        title: the heading.
        text: paragraphs of plain text (escaped).
        header: table column names ([] for no table).
        rows: table rows (cells are rendered with ``str``).
        images: PNG file names relative to the report's folder.
    """

    title: str
    text: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[object]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    path: str | os.PathLike[str], title: str, sections: Sequence[Section], *, footer: str = ""
) -> Path:
    """Write ``sections`` as one HTML page at ``path`` (atomically).

    Every image must already exist next to the report: the page is written last, so a reader
    never sees a report whose images are missing.

    Raises:
        FileNotFoundError: an image a section names does not exist.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "report.html"
        >>> _ = write_report(p, "t", [Section("s", ["hi"], ["a"], [[1]])])
        >>> "<td>1</td>" in p.read_text()
        True
    """
    final = Path(path)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # An empty inline icon: browsers otherwise request /favicon.ico and log a 404.
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts.extend(f"<p>{html.escape(t)}</p>" for t in s.text)
        if s.header:
            parts.append(_table(s.header, s.rows))
        for img in s.images:
            if not (final.parent / img).is_file():
                raise FileNotFoundError(f"report image {final.parent / img} does not exist")
            alt = html.escape(Path(img).stem.replace("_", " "))
            parts.append(f'<img src="{html.escape(img)}" alt="{alt}">')
    if footer:
        parts.append(f'<p class="note">{html.escape(footer)}</p>')
    parts.append("</body></html>\n")
    atomic_write_text(final, "\n".join(parts))
    return final
