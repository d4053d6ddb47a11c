"""The ``labelgrad`` command: ``demo``, ``bench`` and ``train``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``labelgrad`` command."""
    parser = argparse.ArgumentParser(
        prog="labelgrad", description="Label-aware gradient control for PyTorch."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train small classifiers on bundled real data")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``labelgrad`` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from labelgrad.demo import run_demo

        return run_demo(seed=args.seed)
    return 2


if __name__ == "__main__":
    sys.exit(main())
