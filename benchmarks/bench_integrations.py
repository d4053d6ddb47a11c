"""Integrations: the cost of an accumulation window (interleaved medians).

Run: python benchmarks/bench_integrations.py [--quick]
"""

from __future__ import annotations

import sys

from labelgrad.app.bench import format_table
from labelgrad.app.bench.integrations import run

if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
