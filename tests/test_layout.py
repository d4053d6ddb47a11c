"""The layout rules: the library never imports the application, nor another package's privates.

The library is ``labelgrad`` without ``labelgrad.app``. It may use its own package-wide helpers
(``labelgrad._validation``, ``labelgrad._distributed``) and, inside a subpackage, that
subpackage's private modules; nothing else private crosses a package boundary. The application
(``labelgrad.app``) uses the library's public names only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
APP_ONLY = {"tqdm", "matplotlib", "sklearn", "river"}


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted((SRC / "labelgrad").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, ast.parse(path.read_text(), str(path))))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def _package(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def test_the_library_never_imports_the_application() -> None:
    bad = [
        f"{name} imports {target}"
        for name, tree in _modules()
        # ``python -m labelgrad`` runs the command: its module imports the application inside
        # main() only (``import labelgrad`` never runs it; checked below).
        if not name.startswith("labelgrad.app") and name != "labelgrad.__main__"
        for target, _ in _imports(tree)
        if target == "labelgrad.app"
        or target.startswith("labelgrad.app.")
        or target.split(".")[0] in APP_ONLY
    ]
    assert not bad, bad


def test_no_private_name_crosses_a_package_boundary() -> None:
    bad = []
    packages = {name for name, _ in _modules() if (SRC / Path(*name.split("."))).is_dir()}
    for name, tree in _modules():
        here = _package(name, (SRC / Path(*name.split("."))).is_dir())
        for target, names in _imports(tree):
            if not target.startswith("labelgrad"):
                continue
            parts = target.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])
                    break
            else:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if not private:
                    continue
                owner = (
                    target
                    if target in packages or target == "labelgrad"
                    else (target.rpartition(".")[0])
                )
            library_wide = owner == "labelgrad" and not name.startswith("labelgrad.app")
            if not (
                library_wide
                or here == owner
                or (here.startswith(owner + ".") and owner != "labelgrad")
            ):
                bad.append(f"{name} imports private {target} {names}")
    assert not bad, bad


def test_import_labelgrad_pulls_in_no_application_dependency() -> None:
    # torch itself imports tqdm (torch.hub) where it is installed: compare with torch alone.
    code = (
        "import sys, importlib; importlib.import_module(sys.argv[1]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'tqdm','matplotlib','sklearn','river'}))"
    )

    def run(module: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code, module], capture_output=True, text=True, check=True
        ).stdout

    assert run("labelgrad") == run("torch")
    assert "matplotlib" not in run("labelgrad") and "sklearn" not in run("labelgrad")


def test_python_m_labelgrad_loads_the_application_only_when_run() -> None:
    tree = dict(_modules())["labelgrad.__main__"]
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [
        target
        for node in top_level
        for target, _ in _imports(ast.Module([node], []))
        if target.startswith("labelgrad.app")
    ]


def test_row_rules_is_a_coordinator() -> None:
    # Argument parsing, observation, the snapshot path, the families and checkpoints live in
    # their own modules of labelgrad.rows; RowRules only coordinates them.
    lines = (SRC / "labelgrad" / "rows" / "rules.py").read_text().count("\n")
    assert lines < 300, f"rows/rules.py has {lines} lines"


# labelgrad's own capability flags and protocol members: the library tells its types apart with
# isinstance (GramianWeighting / JacobianAggregator, LabelObserver, ...), never by probing for
# one of these names with getattr/hasattr.
CAPABILITY_NAMES = {
    "requires_jacobian",
    "reuses_weights",
    "reads_logits",
    "supports_double_backward",
    "observe",
    "clear_observed",
    "present",
    "weights",
    "aggregate",
    "aggregator",
}
# Where a duck-typed user object is accepted on purpose, and the probe only shapes an error.
PROBES_ALLOWED = {
    # A weighting need not subclass GramianWeighting (a user's callable object works): the
    # wrapper and the argument check verify it has weights() before use.
    ("labelgrad.aggregators.aggregator_types", "weights"),
    ("labelgrad.aggregation.weighing", "aggregate"),
}


def _probes(name: str, tree: ast.Module) -> list[str]:
    return [
        f"{name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"getattr", "hasattr"}
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value in CAPABILITY_NAMES
        and (name, node.args[1].value) not in PROBES_ALLOWED
    ]


def test_no_capability_probing_in_the_library() -> None:
    bad = [
        p
        for name, tree in _modules()
        if not name.startswith("labelgrad.app")
        for p in _probes(name, tree)
    ]
    assert not bad, bad


def test_probe_scan_catches_a_planted_probe() -> None:
    planted = ast.parse('x = getattr(agg, "requires_jacobian", False)\ny = hasattr(o, "observe")')
    assert len(_probes("labelgrad.planted", planted)) == 2
    allowed = ast.parse('w = getattr(agg, "weights", None)')
    assert _probes("labelgrad.aggregators.aggregator_types", allowed) == []


def test_no_module_name_is_used_twice() -> None:
    # One name, one module: `aggregation/jacobian.py` next to `aggregators/jacobian.py` made
    # readers (and tracebacks) guess which one is meant.
    names = Counter(
        p.name for p in (SRC / "labelgrad").rglob("*.py") if p.name not in {"__init__.py"}
    )
    assert not [n for n, count in names.items() if count > 1]


def test_no_test_file_name_is_used_twice() -> None:
    # pytest imports test files by basename (pyproject's pythonpath = ["tests"], rootdir
    # imports): a second tests/*/test_x.py stops the whole suite at collection.
    tests = Path(__file__).resolve().parent
    names = Counter(p.name for p in tests.rglob("test_*.py"))
    assert not [n for n, count in names.items() if count > 1]
