"""Aggregation engines on an MLP 256-512-512, batch 256 (issues 4 (b) and 5 (a), (b)).

Run: PYTHONPATH=src python benchmarks/bench_aggregation.py [--quick] [--threads N]
(``--threads 1`` gives steadier ratios on a machine shared with other jobs.)
"""

import sys

import torch

from labelgrad.app.bench import format_table
from labelgrad.app.bench.aggregation import run

if __name__ == "__main__":
    if "--threads" in sys.argv:
        torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(format_table(run(quick="--quick" in sys.argv)))
