"""Benchmarks of the three levels, shared by ``benchmarks/*.py`` and ``labelgrad bench``.

Each level has a module whose ``run(quick=False)`` returns a list of :class:`Result` rows. All
timings come from :func:`interleaved`: the compared cases run in one process, round-robin, and
the median over many steps is reported, so that a noisy shared machine affects each case alike.
"""

from labelgrad.app.bench.timing import Result, best_of, format_table, interleaved, ratios

__all__ = ["Result", "best_of", "format_table", "interleaved", "ratios"]
