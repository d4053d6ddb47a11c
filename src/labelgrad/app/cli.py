"""The ``labelgrad`` command: ``demo``, ``bench`` and ``train``.

Exit codes: 0 success; 2 a usage or input error (bad arguments, an invalid config, a missing or
corrupt data file, an output folder that cannot be written), reported as one line on stderr;
1 a failure while running.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labelgrad.app.outputs import DEFAULT_OUT

__all__ = ["BENCH_LEVELS", "INSTALL", "UsageError", "build_parser", "main", "missing_requirements"]

BENCH_LEVELS = ("policies", "rows", "weightings", "aggregation")
"""The benchmark modules ``labelgrad bench`` runs, ``labelgrad.app.bench.<name>``, where present."""


QUICK_NOTE = (
    "bench --quick: a smoke run (tiny models, small batches, 3 timed steps), not a measurement: "
    "its ratios change from run to run; run without --quick for figures"
)
"""What ``bench --quick`` prints above its table (and puts in its JSON)."""


class UsageError(Exception):
    """A problem with what the user asked for; the CLI prints it as one line and exits 2."""


INSTALL = "pip install 'labelgrad[cli,data]'"
"""The one install line of everything the command needs (the extras of the application)."""

_FIGURES = ("matplotlib", "the figures")
_TOML = (("tomli", "reading the config"),) if sys.version_info < (3, 11) else ()
_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "demo": (_FIGURES, ("sklearn", "the digits data"), ("river", "the Yeast data")),
    "outcomes": (_FIGURES, ("sklearn", "the digits data"), ("river", "the Yeast data")),
    "train": (_FIGURES,)
    + ((("tomli", "reading the config"),) if sys.version_info < (3, 11) else ()),
}
"""What each command imports beyond torch and numpy: (module, what it is for)."""


def missing_requirements(command: str) -> list[str]:
    """The modules ``command`` needs that are not installed, as "module (what for)".

    Checked before any work (``find_spec`` imports nothing), so that a missing extra is one
    message at the start, never a failure after training.

    Example:
        >>> missing_requirements("bench")
        []
    """
    return [
        f"{module} ({why})"
        for module, why in _NEEDS.get(command, ())
        if importlib.util.find_spec(module) is None
    ]


def _common(p: argparse.ArgumentParser, out_default: str | None) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--out",
        default=out_default,
        help=f"output folder (default: {out_default})" if out_default else "output folder",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the files of another run in --out (without it, such a folder is refused)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``labelgrad`` command.

    Example:
        >>> build_parser().parse_args(["demo", "--seed", "3"]).seed
        3
    """
    from labelgrad import __version__

    parser = argparse.ArgumentParser(
        prog="labelgrad",
        description="Label-aware gradient control for PyTorch: demo, benchmarks and training.",
        epilog="Exit codes: 0 ok, 2 usage/input error, 1 runtime failure.",
    )
    parser.add_argument("--version", action="version", version=f"labelgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_demo(sub)
    _add_bench(sub)
    _add_train(sub)
    return parser


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``demo`` subcommand."""
    demo = sub.add_parser(
        "demo",
        help="train small classifiers on bundled real data; print a table, write a report",
        description="digits-LT (IF 10, 100), Yeast with hidden labels, Yeast label aggregation; "
        "mean ± std over 3 seeds; writes report.html and PNG plots to --out.",
    )
    _common(demo, DEFAULT_OUT["demo"])
    # Hidden: a seconds-long run for tests.
    demo.add_argument("--size", choices=("full", "tiny"), default="full", help=argparse.SUPPRESS)


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``bench`` subcommand."""
    bench = sub.add_parser(
        "bench",
        help="time each level against a plain step (ratios, one process, interleaved medians)",
        description="Time each level of labelgrad (policies, row rules, weightings, aggregation) "
        "against a plain training step: every case runs in one process, interleaved, and the "
        "table gives medians and their ratio to the plain step. --outcomes instead measures "
        "accuracy on real data (docs/results.md).",
    )
    _common(bench, None)
    bench.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: tiny models and few steps (checks that it runs; not a measurement)",
    )
    bench.add_argument(
        "--only",
        action="append",
        choices=BENCH_LEVELS,
        help="run only this benchmark (repeatable)",
    )
    bench.add_argument(
        "--outcomes",
        action="store_true",
        help="run the outcomes benchmark instead (accuracy on real long-tailed and partial-label "
        "data; writes CSV, JSON, plots and results.md to --out, default labelgrad-out/outcomes)",
    )
    # Hidden: a seconds-long outcomes run for tests.
    bench.add_argument("--outcomes-size", choices=("tiny",), default=None, help=argparse.SUPPRESS)


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``train`` subcommand."""
    train = sub.add_parser(
        "train",
        help="train an MLP on your data from a TOML config",
        description="Train on CSV, NPZ or idx data with the policies, row rules and aggregator "
        "a TOML config declares; checkpoints every epoch (docs/api/cli.md: 'labelgrad train').",
        epilog="config keys, with example values (every key is checked):\n\n" + _config_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="the TOML config file")
    _common(train, DEFAULT_OUT["train"])
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from --out/checkpoint.pt if it exists (same config, --seed and data only)",
    )
    train.add_argument(
        "--baseline",
        nargs="?",
        const="plain",
        default=None,
        choices=("plain", "unknown-as-negative"),
        help="also train a baseline with the same seed, model and optimizer, reported side by "
        "side: plain (the default: cross-entropy; multi-label: BCE over the known labels) or "
        "unknown-as-negative (multi-label: BCE with unknown labels as negatives)",
    )


def _config_keys() -> str:
    """The config keys of ``labelgrad train``: the literal block of its module docstring.

    Read from the source, not imported: ``--help`` needs none of the command's extras, and the
    keys are written down once (docs/api/cli.md shows the same block).
    """
    spec = importlib.util.find_spec("labelgrad.app.train")
    if spec is None or spec.origin is None:  # pragma: no cover - the package is always there
        return "see docs/api/cli.md"
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    block: list[str] = []
    for line in doc.partition("::\n")[2].splitlines():
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip("\n")


def _device(name: str) -> str:
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    try:  # a device that cannot hold data (meta) or is absent fails here, not mid-run
        torch.zeros(1, device=dev).cpu()
    except (RuntimeError, NotImplementedError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--device {name}: cannot hold tensors here ({first})") from None
    return name


def _echo(args: argparse.Namespace) -> Callable[[str], None] | None:
    """Where a command prints its tables: nowhere under --json (stdout is the JSON's)."""
    return None if args.json else print


def _finish(args: argparse.Namespace, payload: Any) -> int:
    """Print ``payload`` as JSON under --json; the exit code of a command that succeeded."""
    if args.json:
        print(json.dumps(payload, indent=1))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from labelgrad.app.demo import run_demo

    result = run_demo(
        seed=args.seed,
        device=_device(args.device),
        out=args.out,
        quiet=args.quiet,
        size=args.size,
        echo=_echo(args),
        force=args.force,
    )
    return _finish(args, result.as_dict())


def _cmd_bench(args: argparse.Namespace) -> int:
    from labelgrad.app.bench import format_table
    from labelgrad.app.outputs import claim_output, record_output
    from labelgrad.report import atomic_write_text

    if args.device != "cpu":
        _device(args.device)
    if args.outcomes:
        return _cmd_outcomes(args)
    names = args.only or list(BENCH_LEVELS)
    folder = None
    if args.out is not None:
        identity = f"quick={args.quick} only={','.join(names)}"
        folder = claim_output(args.out, "bench", identity, ["bench.json"], force=args.force)
    modules: list[tuple[str, Any]] = []
    missing: list[str] = []
    for name in names:
        full = f"labelgrad.app.bench.{name}"
        try:
            modules.append((name, importlib.import_module(full)))
        except ModuleNotFoundError as err:
            if err.name != full:  # the module exists but something it needs does not
                raise
            missing.append(name)
    if not modules:
        raise UsageError(f"no benchmark modules found (looked for {', '.join(names)})")
    rows: list[Any] = []
    from labelgrad.app.bench.timing import native_stderr_silenced
    from labelgrad.app.training import progress_bar

    bar = progress_bar(len(modules), quiet=args.quiet, desc="labelgrad bench", leave=False)
    # --quiet: also the profiler's native "USDT ... profiler_start/stop" lines on fd 2.
    silenced = native_stderr_silenced() if args.quiet else contextlib.nullcontext()
    try:
        with silenced:
            for name, mod in modules:
                bar.set_postfix_str(name)
                rows.extend(mod.run(quick=args.quick))
                bar.update()
    finally:
        bar.close()
    payload = {"rows": [r.as_dict() for r in rows], "missing": missing, "quick": args.quick}
    if args.quick:
        payload["note"] = QUICK_NOTE
    if folder is not None:
        atomic_write_text(folder / "bench.json", json.dumps(payload, indent=1) + "\n")
        record_output(folder, ["bench.json"])
    if args.json:
        print(json.dumps(payload, indent=1))
    else:
        if args.quick:
            print(QUICK_NOTE)
        print(format_table(rows))
        for name in missing:
            print(f"(no benchmark module labelgrad.app.bench.{name} in this build)")
    return 0


def _cmd_outcomes(args: argparse.Namespace) -> int:
    from labelgrad.app.bench.outcomes import run_outcomes

    result = run_outcomes(
        size=args.outcomes_size or ("quick" if args.quick else "full"),
        out="labelgrad-out/outcomes" if args.out is None else args.out,
        device=_device(args.device),
        quiet=args.quiet,
        echo=_echo(args),
        command=" ".join(["labelgrad", *args.argv]),
        force=args.force,
    )
    return _finish(args, result.as_dict())


def _cmd_train(args: argparse.Namespace) -> int:
    from labelgrad.app.train import run_train

    summary = run_train(
        args.config,
        out=args.out,
        seed=args.seed,
        device=_device(args.device),
        resume=args.resume,
        quiet=args.quiet,
        baseline=args.baseline,
        echo=_echo(args),
        force=args.force,
    )
    return _finish(args, summary)


def reproducible_blas() -> None:
    """Ask MKL for results that do not depend on memory alignment (``MKL_CBWR=AUTO,STRICT``).

    MKL's matrix products round differently for differently aligned buffers, so a resumed run,
    whose tensors lie elsewhere in memory, drifted from the uninterrupted run in the last bits
    (seen as an Adam moment 5e-10 apart). MKL reads the setting at its first call, so this runs
    before any computation; a user's own ``MKL_CBWR`` wins. It cost nothing measurable here
    (AVX-512 CPU, float32 products of the benchmark MLPs); other BLAS libraries ignore it.
    """
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``labelgrad`` command; returns the process exit code.

    Example:
        >>> main(["bench", "--only", "nonexistent"])  # doctest: +SKIP
        2
    """
    reproducible_blas()
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    need = "outcomes" if getattr(args, "outcomes", False) else args.command
    missing = missing_requirements(need)
    if missing:
        print(
            f"labelgrad {args.command}: error: missing {', '.join(missing)}; install them with: "
            f"{INSTALL}",
            file=sys.stderr,
        )
        return 2
    from labelgrad.app.datasets import DataError, MissingSourceError
    from labelgrad.app.outputs import OutputError
    from labelgrad.app.train_config import ConfigError

    commands = {"demo": _cmd_demo, "bench": _cmd_bench, "train": _cmd_train}
    try:
        if not 0 <= args.seed < 2**32:  # epoch_batches derives 64-bit seeds from it
            raise UsageError(f"--seed must be >= 0 and < 2**32, got {args.seed}")
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return commands[args.command](args)
    except (
        UsageError,
        ConfigError,
        DataError,
        MissingSourceError,
        PermissionError,
        OutputError,
    ) as err:
        print(f"labelgrad {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"labelgrad {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        print(f"labelgrad {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
