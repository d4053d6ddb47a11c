"""The documentation is complete and its code runs.

1. Every name in ``labelgrad.__all__`` and in each public submodule's ``__all__`` is rendered by a
   ``::: path`` directive of the API reference (docs/api/*.md), and its docstring carries a
   doctested ``Example:`` section (run by ``pytest --doctest-modules src/labelgrad``), or it is in
   ``ALLOWED`` with a reason.
2. Every guide snippet (docs/guides/snippets/*.py) runs, and prints what its ``.out`` file (the
   output shown in the guide) records. Regenerate the records after a deliberate change with
   ``LABELGRAD_UPDATE_DOCS=1 pytest tests/test_docs.py``.
3. Every snippet file is shown by some guide, and the guides' Markdown holds the current code
   and output of its snippets (written by docs/gen_docs.py between ``<!-- snippet: NAME -->``
   markers, so that the pages read on the repository page as well as on the site); the API
   pages' name lists (``<!-- names -->``) are current too.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import pkgutil
import re
import runpy
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import labelgrad

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
SNIPPETS = sorted((DOCS / "guides" / "snippets").glob("*.py"))
UPDATE = os.environ.get("LABELGRAD_UPDATE_DOCS") == "1"

# name -> why it needs no Example: section of its own. A reason of the form "snippet:<file>"
# means the guide snippet <file> shows it in use (and the test checks that the snippet names it).
ALLOWED: dict[str, str] = {
    "labelgrad.__version__": "a version string",
    "labelgrad.Encoding": "a Literal type alias; its values are documented in its docstring",
    "labelgrad.TargetsLike": "a type alias (Tensor | Targets)",
    "labelgrad.aggregators.Aggregator": "a type alias (GramianWeighting | JacobianAggregator)",
    "labelgrad.aggregation.Aggregator": "the same type alias as lg.aggregators.Aggregator",
    "labelgrad.GradContext": "snippet:custom_policy.py",
    "labelgrad.policies.state_updates_enabled": "snippet:custom_policy.py",
    "labelgrad.app.bench.Result": "a plain dataclass row of the benchmark harness",
    "labelgrad.app.datasets.Dataset": "returned by digits_lt / yeast (their examples)",
    "labelgrad.app.html.Section": "a plain dataclass taken by write_report",
    "labelgrad.integrations.lightning.default_targets": "the callback's default batch reader",
    "labelgrad.integrations.lightning.aggregate_backward": (
        "needs a LightningModule attached to a trainer; tests/test_lightning.py runs it"
    ),
}

# Every direct submodule of labelgrad that declares __all__ is either public API (each name in
# its __all__ must be documented) or internal with a reason.
PUBLIC_MODULES = {
    "labelgrad.accumulation",
    "labelgrad.aggregation",
    "labelgrad.aggregators",
    "labelgrad.app.bench",
    "labelgrad.app.datasets",
    "labelgrad.app.html",
    "labelgrad.app.plots",
    "labelgrad.class_counts",
    "labelgrad.integrations",
    "labelgrad.integrations.distributed",
    "labelgrad.integrations.lightning",
    "labelgrad.integrations.transformers",
    "labelgrad.monitor",
    "labelgrad.policies",
    "labelgrad.replay",
    "labelgrad.report",
    "labelgrad.rows",
    "labelgrad.targets",
}
INTERNAL_MODULES = {
    "labelgrad.app.cli": "the command's implementation; its commands are documented in docs/api/cli.md",
    "labelgrad.app.demo": "implementation of `labelgrad demo`",
    "labelgrad.app.train": "implementation of `labelgrad train`; its config keys are in docs/api/cli.md",
}

_DIRECTIVE = re.compile(r"^::: *([\w.]+) *$")
_MEMBER = re.compile(r"^ +- +([\w]+) *$")
_BUILT_BY = re.compile(r"(?:Built by|see) :func:`~?([\w.]+)`")


def _public_modules() -> list[ModuleType]:
    """labelgrad and its public submodules (those of PUBLIC_MODULES that exist)."""
    mods: list[ModuleType] = [labelgrad]
    for name in sorted(PUBLIC_MODULES):
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) is None:
            continue
        if importlib.util.find_spec(name) is None:
            continue
        try:
            mods.append(importlib.import_module(name))
        except ModuleNotFoundError as err:  # an optional framework (lightning, ...) is absent
            if (err.name or "").startswith("labelgrad"):
                raise
    return mods


def _resolve(path: str) -> object:
    """Import ``a.b.c`` as the longest importable module prefix, then attribute access."""
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


def _documented() -> tuple[set[int], list[str]]:
    """ids of the objects the API reference renders, and the directives' paths."""
    ids: set[int] = set()
    paths: list[str] = []
    for page in sorted((DOCS / "api").glob("*.md")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            m = _DIRECTIVE.match(line)
            if not m:
                continue
            path = m.group(1)
            paths.append(path)
            obj = _resolve(path)
            members: list[str] = []
            no_members = False
            for follow in lines[i + 1 :]:
                if _DIRECTIVE.match(follow) or follow.startswith("#"):
                    break
                mm = _MEMBER.match(follow)
                if mm:
                    members.append(mm.group(1))
                no_members |= bool(re.match(r"^ +members: *(false|\[\]) *$", follow))
            if isinstance(obj, ModuleType):
                # A module directive renders its public members, unless told which or none.
                names = [] if no_members else members or list(getattr(obj, "__all__", []))
                ids.update(id(getattr(obj, n)) for n in names)
            else:
                ids.add(id(obj))
    return ids, paths


def _has_example(obj: object, module: ModuleType) -> bool:
    if isinstance(obj, ModuleType):
        return obj.__name__ in PUBLIC_MODULES  # its members are checked one by one
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return True  # an error type: documented (the reference lists it), nothing to run
    doc = inspect.getdoc(obj) or ""
    if re.search(r"^Examples?:$", doc, re.MULTILINE):
        return True
    # A class built by a factory ("Built by :func:`mask`", "see :func:`route`") is shown by the
    # factory's example.
    m = _BUILT_BY.search(doc)
    if m and inspect.isclass(obj):
        factory = getattr(module, m.group(1).rsplit(".", 1)[-1], None)
        return factory is not None and "Example:" in (inspect.getdoc(factory) or "")
    return False


def _public_names() -> list[tuple[ModuleType, str]]:
    return [(mod, name) for mod in _public_modules() for name in mod.__all__]


def test_every_submodule_is_classified() -> None:
    unclassified = []
    for info in pkgutil.iter_modules(labelgrad.__path__):
        name = f"labelgrad.{info.name}"
        if info.name.startswith("_") or name in PUBLIC_MODULES or name in INTERNAL_MODULES:
            continue
        if hasattr(importlib.import_module(name), "__all__"):
            unclassified.append(name)
    assert not unclassified, f"add to PUBLIC_MODULES or INTERNAL_MODULES: {unclassified}"


def test_every_public_name_is_in_the_api_reference() -> None:
    ids, _ = _documented()
    mods = _public_modules()
    missing = sorted(
        f"{mod.__name__}.{name}"
        for mod, name in _public_names()
        if id(getattr(mod, name)) not in ids
        and f"{mod.__name__}.{name}" not in ALLOWED
        and not (isinstance(getattr(mod, name), ModuleType) and getattr(mod, name) in mods)
    )
    assert not missing, f"public names missing from docs/api/*.md (add a ::: directive): {missing}"


def test_every_public_name_has_an_example_or_a_reason() -> None:
    missing = []
    for mod, name in _public_names():
        key = f"{mod.__name__}.{name}"
        if _has_example(getattr(mod, name), mod):
            continue
        # The same object re-exported at the top level counts under either name.
        reason = ALLOWED.get(key) or ALLOWED.get(f"labelgrad.{name}")
        if reason is None:
            missing.append(key)
        elif reason.startswith("snippet:"):
            snippet = DOCS / "guides" / "snippets" / reason.removeprefix("snippet:")
            assert name in snippet.read_text(), f"{snippet} does not show {name}"
    assert not missing, f"public names without an Example: section or an ALLOWED reason: {missing}"


def test_allowed_entries_are_still_needed() -> None:
    """Remove an ALLOWED entry once its name is gone or has an example of its own."""
    stale = []
    for key in ALLOWED:
        mod_name, name = key.rsplit(".", 1)
        mod = importlib.import_module(mod_name)
        if name not in getattr(mod, "__all__", []) or _has_example(getattr(mod, name), mod):
            stale.append(key)
    assert not stale, f"stale ALLOWED entries: {stale}"


def test_api_directives_resolve() -> None:
    _, paths = _documented()
    assert paths, "no ::: directives found in docs/api"
    for path in paths:
        _resolve(path)  # raises if a directive names something that does not exist


def _run_snippet(path: Path) -> str:
    # One thread: on a shared, busy machine torch's intra-op threads spin against other
    # processes and make these small models 10x slower; results do not depend on it.
    # The guides run as a user would run them: float32 default, whatever other tests set.
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    return buf.getvalue()


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _same_output(got: str, want: str) -> bool:
    """Equal text, numbers equal up to float noise (other BLAS, other CPU)."""
    if _NUMBER.sub("#", got) != _NUMBER.sub("#", want):
        return False
    for a, b in zip(_NUMBER.findall(got), _NUMBER.findall(want), strict=True):
        x, y = float(a), float(b)
        if abs(x - y) > 1e-4 + 1e-3 * abs(y):
            return False
    return True


@pytest.mark.parametrize("path", SNIPPETS, ids=[p.stem for p in SNIPPETS])
def test_guide_snippet_prints_its_recorded_output(path: Path) -> None:
    got = _run_snippet(path)
    record = path.with_suffix(".out")
    if UPDATE:
        record.write_text(got)
    assert record.exists(), f"{record} missing: run with LABELGRAD_UPDATE_DOCS=1"
    want = record.read_text()
    assert _same_output(got, want), f"{path.name} printed:\n{got}\nthe guide shows:\n{want}"


def _gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", DOCS / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_snippet_is_shown_by_a_guide() -> None:
    shown: set[str] = set()
    for page in DOCS.rglob("*.md"):
        shown.update(m[2] for m in _gen_docs().SNIPPET_BLOCK.finditer(page.read_text()))
    for path in SNIPPETS:
        assert path.name in shown, f"{path.name} is not shown by any guide (<!-- snippet: -->)"
        assert path.with_suffix(".out").name in shown, f"{path.stem}.out is not shown"


def test_pages_read_on_their_own() -> None:
    """Guides hold their code (no build-time include a repository page would show as text)."""
    for page in DOCS.rglob("*.md"):
        if page.name in {"changelog.md", "contributing.md"}:
            continue  # the repository's own CHANGELOG.md / CONTRIBUTING.md, shown on the site
        assert "--8<--" not in page.read_text(), f"{page}: inline the code with docs/gen_docs.py"


def test_generated_blocks_are_up_to_date() -> None:
    """Every guide shows its snippet's current code and output, every API page its name list.

    Fix a failure with ``PYTHONPATH=src python docs/gen_docs.py``.
    """
    gen = _gen_docs()
    if UPDATE:
        gen.main([])
    stale = [str(p.relative_to(ROOT)) for p in gen.stale_pages()]
    assert not stale, f"out of date (run: PYTHONPATH=src python docs/gen_docs.py): {stale}"


def test_gen_docs_rewrites_a_stale_block() -> None:
    gen = _gen_docs()
    name = SNIPPETS[0].name
    stale = f"intro\n<!-- snippet: {name} -->\n```python\nold code\n```\n<!-- /snippet -->\nend\n"
    fresh = gen.render(stale)
    assert fresh != stale
    assert SNIPPETS[0].read_text().rstrip() in fresh
    assert fresh.startswith("intro\n") and fresh.endswith("<!-- /snippet -->\nend\n")
    assert gen.render(fresh) == fresh
    with pytest.raises(FileNotFoundError, match=r"no_such\.py"):
        gen.render("<!-- snippet: no_such.py -->\n<!-- /snippet -->\n")


def test_api_pages_list_their_names_for_plain_markdown_readers() -> None:
    for page in sorted((DOCS / "api").glob("*.md")):
        text = page.read_text()
        if re.search(r"^::: ", text, re.M):
            assert "<!-- names -->" in text, f"{page}: add <!-- names --> <!-- /names -->"


_NAMES_LINE = re.compile(r"^- (`+) ?(class )?([\w.]+)(\(.*\)(?: -> .+)?)? ?\1: (.+)$")


def test_api_name_lists_read_without_the_site() -> None:
    """Each line: a public name that resolves to what it says, its call signature, one line.

    No line links an anchor (``#labelgrad.X`` exists on the built site only).
    """
    bad = []
    for page in sorted((DOCS / "api").glob("*.md")):
        block = re.search(r"<!-- names -->\n(.*?)<!-- /names -->", page.read_text(), re.S)
        for line in (block[1] if block else "").splitlines():
            m = _NAMES_LINE.match(line)
            if m is None or "](#" in line:
                bad.append(f"{page.name}: {line[:80]}")
                continue
            kind, name, sig = m[2], m[3], m[4]
            obj = _resolve(re.sub(r"^lg\.", "labelgrad.", name))
            # The name is a public path: the package before the last dot lists it in __all__.
            package, short = re.sub(r"^lg\.", "labelgrad.", name).rsplit(".", 1)
            if short not in importlib.import_module(package).__all__:
                bad.append(f"{page.name}: {name} is not in {package}.__all__")
            if bool(kind) != inspect.isclass(obj):
                bad.append(f"{page.name}: {name} shown as {'a class' if kind else 'a function'}")
            if inspect.isroutine(obj):
                # An independent reference: the parameter names, in order, from inspect.
                params = list(inspect.signature(obj).parameters)
                shown = re.findall(r"[(,] ?\**(\w+)", (sig or "").split(" -> ")[0])
                if shown != params:
                    bad.append(f"{page.name}: {name} shows {shown}, has {params}")
    assert not bad, "fix docs/gen_docs.py, then run it:\n" + "\n".join(bad)


def test_gen_docs_signatures() -> None:
    sig = _gen_docs().signature

    def f(x: int, /, y: str = "a", *args: int, z: float = 1.0, **kw: int) -> bool:
        return True

    def g(a: object, *, b: object = object()) -> None: ...

    class C:
        def __init__(self, n: int, *, scale: float = 2.0) -> None: ...

    assert sig(f) == "(x, /, y='a', *args, z=1.0, **kw) -> bool"
    assert sig(g) == "(a, *, b=<object object>)"  # no memory address, no "-> None"
    assert sig(C) == "(n, *, scale=2.0)"
    assert sig(labelgrad.Encoding) == ""  # a type alias
    assert sig(ValueError) == ""


def test_changelog_and_contributing_pages_point_to_their_file() -> None:
    """On the repository page, these pages show the include line; a link leads to the file."""
    css = (DOCS / "stylesheets" / "extra.css").read_text()
    assert re.search(r"\.repo-only \{\s*display: none;", css)  # the site shows the file itself
    for page, name in [("changelog.md", "CHANGELOG.md"), ("contributing.md", "CONTRIBUTING.md")]:
        text = (DOCS / page).read_text()
        link = re.search(r'<p class="repo-only">.*<a href="\.\./([\w.]+)">', text)
        assert link and link[1] == name and (ROOT / name).is_file(), page
        assert f'--8<-- "{name}"' in text, page


_FENCE = re.compile(r"^(`{3,})[^\n]*\n(.*?)^\1$", re.S | re.M)


def test_code_in_the_docs_fits_the_column() -> None:
    """Code blocks of the pages wrap at about 88 characters: the site's column cuts longer lines.

    Write 88; 90 is accepted for text generated from a docstring written to 100 columns.
    """
    long = []
    for page in [*DOCS.rglob("*.md"), ROOT / "README.md"]:
        for block in _FENCE.finditer(page.read_text()):
            long += [
                f"{page.name}: {line[:50]}..." for line in block[2].splitlines() if len(line) > 90
            ]
    assert not long, f"code lines over 90 characters (wrap at 88): {long}"


def test_home_page_example_runs() -> None:
    """The home page's code defines every name it uses, and the policy masks the unknowns."""
    text = (DOCS / "index.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    namespace: dict[str, object] = {"__name__": "docs_index"}
    exec(compile(code[1], "docs/index.md", "exec"), namespace)
    model = namespace["model"]
    assert all(p.grad is not None for p in model.parameters())  # type: ignore[attr-defined]


_OLD_MODULES = re.compile(
    r"\blg\.datasets\b|\blabelgrad\.(?:bench|datasets|cli|demo|train)\b|"
    r"(?:lg|labelgrad)\.report\.(?:plot_|write_report)|src/labelgrad/bench/"
)


def test_docs_name_the_application_where_it_lives() -> None:
    """The application moved to labelgrad.app (CHANGELOG); no page names the old modules."""
    pages = [*DOCS.rglob("*.md"), ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    pages += [ROOT / "benchmarks" / "README.md", *(ROOT / "examples").glob("*.py")]
    stale = [
        f"{page.relative_to(ROOT)}: {m[0]}"
        for page in pages
        if page.exists()
        for m in _OLD_MODULES.finditer(page.read_text(encoding="utf-8"))
    ]
    assert not stale, f"old module names (now under labelgrad.app): {stale}"


def test_pages_link_without_mkdocs_autorefs() -> None:
    """``[text][labelgrad.X]`` renders as raw brackets on the repository page: link the API page.

    Write ``[text](../api/rows.md#labelgrad.RowRules)``: the built site checks the anchor
    (``mkdocs build --strict``), and the repository page opens the API page.
    """
    autorefs = [
        f"{page.relative_to(ROOT)}: {m[0]}"
        for page in [*DOCS.rglob("*.md"), ROOT / "README.md"]
        for m in re.finditer(r"\]\[labelgrad[\w.]*\]", page.read_text(encoding="utf-8"))
    ]
    assert not autorefs, f"autoref links (use a relative link with an anchor): {autorefs}"


def test_gen_docs_keeps_a_names_list_it_cannot_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an optional framework the list stays as written; a labelgrad import error raises."""
    gen = _gen_docs()
    page = (
        "# P\n\n<!-- names -->\n- old\n<!-- /names -->\n\n::: labelgrad.integrations.lightning.X\n"
    )

    def missing(name: str) -> Any:
        def resolve(path: str) -> object:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        return resolve

    monkeypatch.setattr(gen, "_resolve", missing("lightning"))
    assert gen.render(page) == page
    monkeypatch.setattr(gen, "_resolve", missing("labelgrad.nothing"))
    with pytest.raises(ModuleNotFoundError):
        gen.render(page)
    monkeypatch.undo()
    real = gen.render(page.replace("labelgrad.integrations.lightning.X", "labelgrad.Targets"))
    assert "- old" not in real and "lg.Targets" in real.split("<!-- /names -->")[0]


def test_gen_docs_shows_one_numbered_part() -> None:
    gen = _gen_docs()
    code = gen.snippet_block("from_the_question.py", 4)
    assert code.startswith("```python\n# 4. ") and "\n# 5. " not in code and "\n# 3. " not in code
    out = gen.snippet_block("from_the_question.out", 4)
    assert out.startswith("```text\n4. ") and "\n5. " not in out
    setup = gen.snippet_block("from_the_question.py", 0)
    assert "import labelgrad as lg" in setup and "# 1. " not in setup
    with pytest.raises(ValueError, match="no part 99"):
        gen.snippet_block("from_the_question.py", 99)


def test_directives_name_functions_that_share_a_module_name_in_full() -> None:
    """``::: labelgrad.route`` rendered the module labelgrad/rows/route.py (Router twice).

    griffe resolves a re-exported name that is also a submodule's name (``route`` in
    ``route.py``) to the module; such names need their full path, ``labelgrad.rows.route.route``.
    """
    _, paths = _documented()
    ambiguous = []
    for path in paths:
        obj = _resolve(path)
        name = getattr(obj, "__name__", "")
        module = getattr(obj, "__module__", "") or ""
        if isinstance(obj, ModuleType) or not module.endswith(f".{name}"):
            continue
        if path != f"{module}.{name}":
            ambiguous.append(f"{path} -> ::: {module}.{name}")
    assert not ambiguous, f"write these directives in full: {ambiguous}"


def test_rendered_docstrings_have_no_rest_literal_markers() -> None:
    """A reST ``text::`` literal block shows as a stray "::" in the Google-style rendering
    (the CLI page showed "errors)::"); show such blocks with ``<!-- literal: -->`` instead."""
    _, paths = _documented()
    stray = []
    for path in paths:
        doc = inspect.getdoc(_resolve(path)) or ""
        stray += [f"{path}: ...{line[-30:]}" for line in doc.splitlines() if line.endswith("::")]
    assert not stray, f"reST literal markers in rendered docstrings: {stray}"
