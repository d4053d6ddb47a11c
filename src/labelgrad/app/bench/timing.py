"""Interleaved median timing: the one way labelgrad measures speed."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "Result",
    "best_of",
    "format_table",
    "interleaved",
    "native_stderr_silenced",
    "ratios",
]


@dataclass
class Result:
    """One benchmark row.

    Attributes:
        benchmark: what is measured (e.g. "policies/mlp").
        case: the compared case (e.g. "plain", "chain").
        median_ms: the median step time in milliseconds.
        ratio: ``median_ms`` over the baseline case's median (1.0 for the baseline).
        extra: anything else worth reporting (peak memory, K, ...).
    """

    benchmark: str
    case: str
    median_ms: float
    ratio: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict (for JSON)."""
        return asdict(self)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    cases: Mapping[str, Callable[[], object]],
    *,
    steps: int = 30,
    warmup: int = 5,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Time each case ``steps`` times, round-robin, and return median seconds per case.

    Args:
        cases: name -> a callable running one step of that case.
        steps: timed steps per case (>= 1).
        warmup: untimed steps per case first (compilation, allocator warm-up).
        device: synchronised around each step when it is a CUDA device (timing needs the sync;
            the code under test must not).

    Returns:
        name -> median seconds per step.

    Example:
        >>> times = interleaved({"a": lambda: sum(range(100)), "b": lambda: None}, steps=3)
        >>> sorted(times)
        ['a', 'b']
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(steps):
        for name, fn in cases.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in samples.items()}


def ratios(benchmark: str, times: Mapping[str, float], baseline: str, **extra: Any) -> list[Result]:
    """Turn :func:`interleaved` medians into rows with ratios to ``baseline``.

    Example:
        >>> [(r.case, r.ratio) for r in ratios("demo", {"plain": 0.002, "chain": 0.003}, "plain")]
        [('plain', 1.0), ('chain', 1.5)]
    """
    base = times[baseline]
    return [Result(benchmark, name, 1000 * t, t / base, dict(extra)) for name, t in times.items()]


def best_of(runs: list[list[Result]]) -> list[Result]:
    """Each (benchmark, case)'s best over repeated runs, with every run's ratio and the spread.

    The issue tables quote "best of three interleaved runs (spread)": the best run is the one
    least disturbed by other load, and the spread says how much the load moved it. Each run's
    ratios are taken within that run (to its own baseline). The row's ``ratio`` is the lowest
    ratio and its ``median_ms`` the lowest median; ``extra`` gains ``ratio_runs`` (each run's
    ratio, in order) and ``spread`` (lowest, highest ratio).

    Example:
        >>> one = ratios("demo", {"plain": 0.002, "chain": 0.003}, "plain")
        >>> two = ratios("demo", {"plain": 0.002, "chain": 0.0025}, "plain")
        >>> [(r.case, r.ratio, r.extra["spread"]) for r in best_of([one, two])]
        [('plain', 1.0, (1.0, 1.0)), ('chain', 1.25, (1.25, 1.5))]
    """
    grouped: dict[tuple[str, str], list[Result]] = {}
    for run in runs:
        for row in run:
            grouped.setdefault((row.benchmark, row.case), []).append(row)
    best = []
    for rows in grouped.values():
        each = [r.ratio for r in rows]
        extra = {**rows[0].extra, "ratio_runs": each, "spread": (min(each), max(each))}
        fastest = min(r.median_ms for r in rows)
        best.append(Result(rows[0].benchmark, rows[0].case, fastest, min(each), extra))
    return best


def format_table(rows: list[Result]) -> str:
    """A plain-text table of benchmark rows.

    Example:
        >>> table = format_table(ratios("demo", {"plain": 0.002}, "plain"))
        >>> print(table)  # doctest: +NORMALIZE_WHITESPACE
        benchmark  case  median ms  ratio
        demo       plain     2.000  1.00x
    """
    wb = max([42, *(len(r.benchmark) for r in rows)])
    wc = max([28, *(len(r.case) for r in rows)])
    lines = [f"{'benchmark':<{wb}} {'case':<{wc}} {'median ms':>10} {'ratio':>7}"]
    for r in rows:
        line = f"{r.benchmark:<{wb}} {r.case:<{wc}} {r.median_ms:>10.3f} {r.ratio:>6.2f}x"
        if "spread" in r.extra:  # from best_of
            low, high = r.extra["spread"]
            line += f" ({low:.2f}-{high:.2f})"
        lines.append(line)
    return "\n".join(lines)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to the null device for the block (``bench --quiet``).

    torch's profiler prints ``USDT ... profiler_start/stop`` lines from native code, straight to
    file descriptor 2, where ``sys.stderr`` redirection does not reach; Python's own stderr is
    flushed before and restored after.

    Example:
        >>> with native_stderr_silenced():
        ...     _ = os.write(2, b"not shown")
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
