"""Level 1: training-step time with vs without a chain of policies (interleaved medians).

Run: python benchmarks/bench_policies.py [--quick]
"""

from __future__ import annotations

import sys

from labelgrad.app.bench import format_table
from labelgrad.app.bench.policies import run

if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
