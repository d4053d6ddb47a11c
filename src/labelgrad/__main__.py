"""``python -m labelgrad``: the ``labelgrad`` command (:mod:`labelgrad.app.cli`).

The application is imported only when this runs: ``import labelgrad`` never loads it.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Run the ``labelgrad`` command with this process's arguments; return its exit code."""
    from labelgrad.app.cli import main as command

    return command(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
