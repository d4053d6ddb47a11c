"""The benchmark summaries: best of repeated runs, with the spread the tables quote."""

from __future__ import annotations

from labelgrad.app.bench.timing import Result, best_of, format_table, ratios


def test_best_of_takes_each_case_lowest_ratio_and_the_range_over_runs() -> None:
    runs = [
        ratios("p1", {"plain": 2.0, "chain": 2.4}, "plain", k=16),
        ratios("p1", {"plain": 2.0, "chain": 2.2}, "plain", k=16),
        ratios("p1", {"plain": 2.0, "chain": 3.0}, "plain", k=16),
    ]
    best = {r.case: r for r in best_of(runs)}
    each = [run[1].ratio for run in runs]
    assert best["chain"].ratio == min(each) == runs[1][1].ratio
    assert best["chain"].median_ms == min(run[1].median_ms for run in runs)
    assert best["chain"].extra == {"k": 16, "ratio_runs": each, "spread": (min(each), max(each))}
    assert best["plain"].extra["spread"] == (1.0, 1.0)


def test_best_of_keeps_benchmarks_apart_and_in_first_seen_order() -> None:
    runs = [[Result("a", "x", 1.0, 1.5), Result("b", "x", 1.0, 0.5)], [Result("a", "x", 1.0, 1.2)]]
    assert [(r.benchmark, r.ratio) for r in best_of(runs)] == [("a", 1.2), ("b", 0.5)]


def test_format_table_prints_the_spread_only_for_summaries() -> None:
    plain = format_table(ratios("p1", {"plain": 0.002, "chain": 0.003}, "plain"))
    assert "(" not in plain
    summary = format_table(best_of([ratios("p1", {"plain": 0.002, "chain": 0.003}, "plain")]))
    assert summary.splitlines()[2].endswith("1.50x (1.50-1.50)")
