"""Aggregation engines on an MLP 256-512-512, batch 256 (issues 4 (b), 5 (a), (b) and 13).

Run: PYTHONPATH=src python benchmarks/bench_aggregation.py [--quick] [--threads N]
Without ``--threads`` every figure is reported twice: at torch's default thread count (what
users run) and at 1 thread (steadier on a machine shared with other jobs).
"""

import os
import sys

import torch

from labelgrad.app.bench import format_table
from labelgrad.app.bench.aggregation import run

if __name__ == "__main__":
    default = torch.get_num_threads()
    if "--threads" in sys.argv:
        counts = [int(sys.argv[sys.argv.index("--threads") + 1])]
    else:
        counts = [default, 1] if default != 1 else [1]
    for n in counts:
        torch.set_num_threads(n)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        label = "default" if n == default else "set"
        print(f"torch {torch.__version__}, {n} thread(s) ({label}), load average {load:.2f}")
        print(format_table(run(quick="--quick" in sys.argv)))
