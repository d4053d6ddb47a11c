"""Write the generated parts of the Markdown pages, so that they read on their own.

The pages are read in two places: the built MkDocs site and the repository page (GitHub renders
the Markdown as it is, without MkDocs extensions). Two kinds of blocks are therefore written into
the Markdown itself, between marker comments, instead of being included at build time:

- ``<!-- snippet: NAME -->`` ... ``<!-- /snippet -->``: a fenced block holding the file
  docs/guides/snippets/NAME (``python`` for a ``.py`` guide program, ``text`` for the ``.out``
  output it records; tests/test_docs.py runs each program and compares with its ``.out``).
- ``<!-- names -->`` ... ``<!-- /names -->`` on an API page: one line per ``::: path``
  directive that follows on the page, the name and the first paragraph of its docstring.

Usage, from the repository root (with the sources importable, e.g. ``PYTHONPATH=src``)::

    python docs/gen_docs.py           # rewrite every stale page
    python docs/gen_docs.py --check   # list the stale pages and exit 1 (tests/test_docs.py)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
SNIPPETS = DOCS / "guides" / "snippets"

SNIPPET_BLOCK = re.compile(r"(<!-- snippet: (\S+) -->\n)(.*?)(<!-- /snippet -->)", re.S)
NAMES_BLOCK = re.compile(r"(<!-- names -->\n)(.*?)(<!-- /names -->)", re.S)
DIRECTIVE = re.compile(r"^::: *([\w.]+) *$", re.M)
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj):`~?([\w.]+)`")


def _fence(body: str, lang: str) -> str:
    # A fence longer than any backtick run inside the body, so the body never closes it.
    runs = [len(r) for r in re.findall(r"`+", body)]
    ticks = "`" * max(3, max(runs, default=0) + 1)
    return f"{ticks}{lang}\n{body.rstrip()}\n{ticks}\n"


def snippet_block(name: str) -> str:
    """The fenced block that shows docs/guides/snippets/``name``."""
    path = SNIPPETS / name
    if not path.is_file():
        raise FileNotFoundError(f"snippet {name!r}: {path} does not exist")
    lang = "python" if path.suffix == ".py" else "text"
    return _fence(path.read_text(encoding="utf-8"), lang)


def _resolve(path: str) -> object:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def _display_name(path: str, obj: object) -> str:
    import labelgrad

    short = path.rsplit(".", 1)[-1]
    if short in labelgrad.__all__ and getattr(labelgrad, short) is obj:
        return f"lg.{short}"
    if path.startswith("labelgrad.app."):
        return path
    return "lg." + path.removeprefix("labelgrad.")


def _summary(obj: object) -> str:
    """The first paragraph of the docstring, on one line, with reST roles as code."""
    doc = inspect.getdoc(obj) or ""
    first = " ".join(doc.split("\n\n", 1)[0].split())
    first = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", first)
    return first.replace("``", "`")


def names_block(page_text: str) -> str:
    """One Markdown list line per ``:::`` directive of the page (module directives skipped)."""
    lines = []
    for path in DIRECTIVE.findall(page_text):
        obj = _resolve(path)
        if inspect.ismodule(obj):
            continue
        lines.append(f"- [`{_display_name(path, obj)}`](#{path}): {_summary(obj)}")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` with every generated block rewritten."""
    text = SNIPPET_BLOCK.sub(lambda m: m[1] + snippet_block(m[2]) + m[4], text)
    if NAMES_BLOCK.search(text):
        text = NAMES_BLOCK.sub(lambda m: m[1] + names_block(text) + m[3], text)
    return text


def pages() -> list[Path]:
    """Every Markdown page of docs/ (the snippets folder holds no pages)."""
    return sorted(p for p in DOCS.rglob("*.md") if SNIPPETS not in p.parents)


def stale_pages() -> list[Path]:
    """The pages whose generated blocks differ from what :func:`render` writes."""
    return [p for p in pages() if render(p.read_text(encoding="utf-8")) != p.read_text("utf-8")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="list stale pages, exit 1 if any")
    args = parser.parse_args(argv)
    stale = stale_pages()
    for page in stale:
        rel = page.relative_to(DOCS.parent)
        if args.check:
            print(f"out of date: {rel} (run: python docs/gen_docs.py)", file=sys.stderr)
        else:
            page.write_text(render(page.read_text(encoding="utf-8")), encoding="utf-8")
            print(f"rewrote {rel}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
