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
body { font-family: system-ui, sans-serif; max-width: 80rem; margin: 2rem auto; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.5rem 0; }
figure { margin: 1rem 0 1.5rem; }
figcaption { color: #444; font-size: 0.9rem; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; }
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
        captions: a caption for each image (the same order; missing ones are left out).
        bullets: a list of short points (e.g. the takeaways), after the text.
        code: preformatted text shown verbatim (e.g. the config), after the table.
    """

    title: str
    text: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[object]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    code: str = ""


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
        if s.bullets:
            items = "".join(f"<li>{html.escape(b)}</li>" for b in s.bullets)
            parts.append(f"<ul>{items}</ul>")
        if s.header:
            parts.append(_table(s.header, s.rows))
        if s.code:
            parts.append(f"<pre>{html.escape(s.code)}</pre>")
        for i, img in enumerate(s.images):
            if not (final.parent / img).is_file():
                raise FileNotFoundError(f"report image {final.parent / img} does not exist")
            alt = html.escape(Path(img).stem.replace("_", " "))
            cap = s.captions[i] if i < len(s.captions) else ""
            caption = f"<figcaption>{html.escape(cap)}</figcaption>" if cap else ""
            parts.append(f'<figure><img src="{html.escape(img)}" alt="{alt}">{caption}</figure>')
    if footer:
        parts.append(f'<p class="note">{html.escape(footer)}</p>')
    parts.append("</body></html>\n")
    atomic_write_text(final, "\n".join(parts))
    return final
