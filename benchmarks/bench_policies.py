"""Level 1: training-step time with vs without a chain of policies (interleaved medians).

Run: python benchmarks/bench_policies.py [--quick] [--runs N]

``--runs N`` repeats the whole interleaved comparison N times and prints, for each case, the
best run's ratio and the spread over the runs (every run's ratio beside it).
"""

from __future__ import annotations

import argparse

from labelgrad.app.bench.policies import run
from labelgrad.app.bench.timing import format_table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps (smoke run)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the comparison N times")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    print(format_table(run(quick=args.quick, runs=args.runs)))
