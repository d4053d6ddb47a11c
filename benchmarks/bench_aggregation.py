"""Aggregation engines on an MLP 256-512-512, batch 256 (issues 4 (b), 5 (a), (b), 13 and 24).

Run: PYTHONPATH=src python benchmarks/bench_aggregation.py [--quick] [--threads N] [--runs N]
Without ``--threads`` every figure is reported twice: at torch's default thread count (what
users run) and at 1 thread (steadier on a machine shared with other jobs). ``--runs N`` repeats
each interleaved comparison N times and prints the best ratio and the spread of the ratios.
"""

import os
import sys

import torch

from labelgrad.app.bench.aggregation import run
from labelgrad.app.bench.timing import format_table


def _option(name: str) -> int | None:
    if name not in sys.argv:
        return None
    return int(sys.argv[sys.argv.index(name) + 1])


if __name__ == "__main__":
    threads = _option("--threads")
    runs = _option("--runs") or 1
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"torch {torch.__version__}, default threads {torch.get_num_threads()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    rows = run(
        quick="--quick" in sys.argv, runs=runs, threads=None if threads is None else [threads]
    )
    print(format_table(rows))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
