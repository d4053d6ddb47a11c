"""Benchmark (a): weighting solve time, labelgrad vs TorchJD 0.18 (K = 16, 80, 256).

Run: ``PYTHONPATH=src python benchmarks/bench_weightings.py [--quick]``.
"""

import sys

from labelgrad.app.bench.timing import format_table
from labelgrad.app.bench.weightings import run

if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
