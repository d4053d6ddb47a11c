"""RowRules (AdamW, half the classes frozen, lr_scale, skip_absent) vs bare AdamW.

Run: PYTHONPATH=src python benchmarks/bench_rows.py [--quick]
"""

from __future__ import annotations

import sys

from labelgrad.app.bench.rows import run
from labelgrad.app.bench.timing import format_table

if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
