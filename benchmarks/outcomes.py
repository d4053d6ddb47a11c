"""The outcomes benchmark: accuracy on real long-tailed, partial-label and multi-label data.

Run: python benchmarks/outcomes.py [--quick] [--out FOLDER] [--device cuda]
(the same as ``labelgrad bench --outcomes ...``; see docs/results.md for the full run's results).
"""

from __future__ import annotations

import sys

from labelgrad.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--outcomes", *sys.argv[1:]]))
