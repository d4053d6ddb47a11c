"""Aggregation engines on an MLP 256-512-512, batch 256 (issues 4 (b) and 5 (a), (b)).

Run: PYTHONPATH=src python benchmarks/bench_aggregation.py [--quick]
"""

import sys

from labelgrad.bench import format_table
from labelgrad.bench.aggregation import run

if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
