"""Benchmark (a): weighting solve time, labelgrad vs TorchJD 0.18 (K = 16, 80, 256), and UPGrad
per call over Gramians recorded from a training run (K = 16, 80, 100: the ``sequence`` rows).

Run: ``PYTHONPATH=src python benchmarks/bench_weightings.py [--quick] [--threads N ...]``.
By default it reports twice: at torch's default intra-op thread count, then at 1 thread.
"""

import argparse

import torch

from labelgrad.app.bench.timing import format_table
from labelgrad.app.bench.weightings import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="K = 16 and 80, few steps")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="thread counts (default: torch's, 1)"
    )
    args = parser.parse_args()
    for threads in dict.fromkeys(args.threads or [torch.get_num_threads(), 1]):
        print(f"## torch threads = {threads}")
        print(format_table(run(quick=args.quick, threads=threads)))
