"""Write the generated parts of the Markdown pages, so that they read on their own.

The pages are read in two places: the built MkDocs site and the repository page (GitHub renders
the Markdown as it is, without MkDocs extensions). Two kinds of blocks are therefore written into
the Markdown itself, between marker comments, instead of being included at build time:

- ``<!-- snippet: NAME -->`` ... ``<!-- /snippet -->``: a fenced block holding the file
  docs/guides/snippets/NAME (``python`` for a ``.py`` guide program, ``text`` for the ``.out``
  output it records; tests/test_docs.py runs each program and compares with its ``.out``).
  ``<!-- snippet: NAME K -->`` shows part K only: in a program, the lines from the comment
  ``# K. ...`` to the next numbered comment (K = 0: the lines before ``# 1.``); in an output,
  the lines from the one starting ``K. `` to the next numbered one.
- ``<!-- literal: MODULE LANG -->`` ... ``<!-- /literal -->``: the first literal block (the
  indented block after ``::``) of MODULE's docstring, fenced as LANG (e.g. the TOML keys of
  ``labelgrad train``, kept where the code is and shown on the command's page).
- ``<!-- names -->`` ... ``<!-- /names -->`` on an API page: one line per ``::: path``
  directive that follows on the page: the public name (``lg.X``, or its shortest path through a
  package's ``__all__``) with its signature, and the first paragraph of its docstring. The
  names come from the live package, so after code moves between modules one run of this script
  brings every page up to date.

Usage, from the repository root (with the sources importable, e.g. ``PYTHONPATH=src``)::

    python docs/gen_docs.py           # rewrite every stale page
    python docs/gen_docs.py --check   # list the stale pages and exit 1 (tests/test_docs.py)
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import itertools
import re
import sys
import textwrap
from pathlib import Path

DOCS = Path(__file__).resolve().parent
SNIPPETS = DOCS / "guides" / "snippets"

SNIPPET_BLOCK = re.compile(r"(<!-- snippet: (\S+)(?: (\d+))? -->\n)(.*?)(<!-- /snippet -->)", re.S)
LITERAL_BLOCK = re.compile(r"(<!-- literal: ([\w.]+) (\w+) -->\n)(.*?)(<!-- /literal -->)", re.S)
NAMES_BLOCK = re.compile(r"(<!-- names -->\n)(.*?)(<!-- /names -->)", re.S)
DIRECTIVE = re.compile(r"^::: *([\w.]+) *$", re.M)
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj):`(~?)([\w.]+)`")
_RST_LINK = re.compile(r"`([^`<]+?) <([^>]+)>`_")


def _fence(body: str, lang: str) -> str:
    # A fence longer than any backtick run inside the body, so the body never closes it.
    runs = [len(r) for r in re.findall(r"`+", body)]
    ticks = "`" * max(3, max(runs, default=0) + 1)
    return f"{ticks}{lang}\n{body.rstrip()}\n{ticks}\n"


def _part(text: str, part: int, python: bool) -> str:
    """Part ``part`` of a numbered program or output (see the module docstring)."""
    start = re.compile(r"^# (\d+)\. " if python else r"^(\d+)\. ")
    parts: dict[int, list[str]] = {0: []}
    current = 0
    for line in text.splitlines():
        m = start.match(line)
        if m:
            current = int(m[1])
            parts[current] = []
        parts[current].append(line)
    if part not in parts or not parts[part]:
        raise ValueError(f"no part {part}: numbered parts are {sorted(parts)}")
    return "\n".join(parts[part]).strip("\n") + "\n"


def snippet_block(name: str, part: int | None = None) -> str:
    """The fenced block that shows docs/guides/snippets/``name`` (or one numbered part)."""
    path = SNIPPETS / name
    if not path.is_file():
        raise FileNotFoundError(f"snippet {name!r}: {path} does not exist")
    python = path.suffix == ".py"
    text = path.read_text(encoding="utf-8")
    if part is not None:
        text = _part(text, part, python)
    return _fence(text, "python" if python else "text")


def literal_block(module: str, lang: str) -> str:
    """The first ``::`` literal block of ``module``'s docstring, dedented and fenced."""
    doc = inspect.getdoc(importlib.import_module(module)) or ""
    m = re.search(r"::\n\n((?:(?: {4}.*)?\n)+)", doc + "\n")
    if m is None:
        raise ValueError(f"{module}'s docstring has no literal block (text ending in '::')")
    return _fence(textwrap.dedent(m[1]), lang)


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
    """The public name of ``obj``: ``lg.X`` when ``labelgrad`` exports it, else its shortest path
    through a package that lists it in ``__all__`` (``lg.aggregation.X``, not the module that
    defines it), so that moving code between private modules does not change the pages."""
    short = path.rsplit(".", 1)[-1]
    parts = path.split(".")
    for i in range(1, len(parts)):
        module = sys.modules.get(".".join(parts[:i]))
        if module is None or short not in getattr(module, "__all__", ()):
            continue
        if getattr(module, short, None) is obj:
            path = f"{module.__name__}.{short}"
            break
    if path.startswith("labelgrad.app."):
        return path
    return "lg." + path.removeprefix("labelgrad.")


_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _default(value: object) -> str:
    # An object's repr may hold its memory address, which would change the page on every run.
    return _ADDRESS.sub("", repr(value))


def signature(obj: object) -> str:
    """``obj``'s call signature as a call reads: the parameters, their defaults and ``->`` the
    return annotation; no parameter annotations (the site shows them), "" where there is none.

    Example:
        >>> def f(x: int, /, y: str = "a", *args: int, z: float = 1.0, **kw: int) -> bool: ...
        >>> signature(f)
        "(x, /, y='a', *args, z=1.0, **kw) -> bool"
    """
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return ""  # a type alias (typing's aliases are callable, but not with a signature)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    params = list(sig.parameters.values())
    kinds = [p.kind for p in params]
    P = inspect.Parameter
    if inspect.isclass(obj) and kinds == [P.VAR_POSITIONAL, P.VAR_KEYWORD]:
        return ""  # a protocol or an exception: nothing to call it with
    out: list[str] = []
    for i, p in enumerate(params):
        if p.kind is P.KEYWORD_ONLY and P.VAR_POSITIONAL not in kinds and "*" not in out:
            out.append("*")
        star = "*" if p.kind is P.VAR_POSITIONAL else "**" if p.kind is P.VAR_KEYWORD else ""
        default = "" if p.default is p.empty else f"={_default(p.default)}"
        out.append(f"{star}{p.name}{default}")
        last_positional = i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY
        if p.kind is p.POSITIONAL_ONLY and last_positional:
            out.append("/")
    ret = sig.return_annotation
    if ret is sig.empty or ret is None or ret == "None" or inspect.isclass(obj):
        return f"({', '.join(out)})"
    ret_text = ret if isinstance(ret, str) else inspect.formatannotation(ret)
    return f"({', '.join(out)}) -> {ret_text}"


def _attribute_doc(path: str, obj: object) -> str:
    """The docstring under a module-level assignment (a type alias), as griffe reads it."""
    name = path.rsplit(".", 1)[-1]
    # The defining module: the first labelgrad module that holds this object under that name
    # and has the docstring (a re-export in a package __init__ has none).
    modules = [m for k, m in sorted(sys.modules.items()) if k.startswith("labelgrad") and m]
    for module in modules:
        if getattr(module, name, None) is obj:
            doc = _assignment_doc(inspect.getsource(module), name)
            if doc:
                return doc
    return ""


def _assignment_doc(source: str, name: str) -> str:
    body = ast.parse(source).body
    for node, after in itertools.pairwise(body):
        target: ast.expr | None = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if (
            isinstance(target, ast.Name)
            and target.id == name
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            return inspect.cleandoc(after.value.value)
    return ""


def _summary(path: str, obj: object) -> str:
    """The first paragraph of the docstring, on one line, with reST markup as Markdown."""
    if inspect.isclass(obj) or inspect.isroutine(obj):
        doc = inspect.getdoc(obj) or ""
    else:  # a type alias or a constant: its docstring is the string under its assignment
        doc = _attribute_doc(path, obj)
    first = " ".join(doc.split("\n\n", 1)[0].split())
    # reST shows `~a.b.c` as `c` and `a.b.c` as written.
    first = _ROLE.sub(lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", first)
    first = _RST_LINK.sub(r"[\1](\2)", first)
    return first.replace("``", "`")


def names_block(page_text: str) -> str:
    """One Markdown list line per ``:::`` directive of the page (module directives skipped):
    the public name with its signature, and the first paragraph of its docstring.

    The lines hold no links: the anchors of the names exist on the built site only, and the list
    is what a reader of the repository page reads instead of the rendered reference below it.
    """
    lines = []
    for path in DIRECTIVE.findall(page_text):
        obj = _resolve(path)
        if inspect.ismodule(obj):
            continue
        kind = "class " if inspect.isclass(obj) else ""
        code = f"{kind}{_display_name(path, obj)}{signature(obj)}"
        lines.append(f"- {_code(code)}: {_summary(path, obj)}")
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    # A code span delimited by more backticks than any run inside it (a default such as "`").
    runs = [len(r) for r in re.findall(r"`+", text)]
    ticks = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def render(text: str) -> str:
    """``text`` with every generated block rewritten."""
    text = SNIPPET_BLOCK.sub(
        lambda m: m[1] + snippet_block(m[2], None if m[3] is None else int(m[3])) + m[5], text
    )
    text = LITERAL_BLOCK.sub(lambda m: m[1] + literal_block(m[2], m[3]) + m[5], text)
    block = NAMES_BLOCK.search(text)
    if block:
        try:
            names = names_block(text)
        except ModuleNotFoundError as err:
            if (err.name or "").startswith("labelgrad"):
                raise
            # An optional framework (lightning, transformers) is not installed here: the page's
            # list cannot be rebuilt, so it is kept as it is.
            return text
        text = text[: block.start(2)] + names + text[block.end(2) :]
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
