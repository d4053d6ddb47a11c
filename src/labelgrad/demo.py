"""``labelgrad demo``: placeholder until the demo lands."""

from __future__ import annotations


def run_demo(seed: int = 0) -> int:
    """Run the demo; returns an exit code."""
    return 0
