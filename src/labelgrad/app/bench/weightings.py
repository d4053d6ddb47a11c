"""Benchmark (a): weighting solve time vs TorchJD 0.18 at K = 16, 80, 256.

Same Gramians for both, one process, interleaved medians (:func:`interleaved`), at a given
torch intra-op thread count (default: one) (TorchJD's solvers, quadprog and Python loops, are
single-threaded; on a shared 2-core machine torch's thread pool otherwise thrashes). UPGrad and
DualProj run cold (``warm_start=False``: every call solves from scratch) and, as a separate case,
warm (the active sets of the previous call on the same G: the steady state of training when the
Gramian changes slowly). TorchJD cases are skipped when it (or quadprog) is not installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from labelgrad import aggregators
from labelgrad.app.bench.timing import Result, interleaved, ratios

__all__ = ["run"]

METHODS = ("UPGrad", "PCGrad", "MGDA", "DualProj")


def _gramian(k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(k, 512, generator=g) * (1 + 3 * torch.rand(k, 1, generator=g))
    return j @ j.T


def _torchjd(method: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if importlib.util.find_spec("torchjd") is None:
        return None
    if method in ("UPGrad", "DualProj") and (
        importlib.util.find_spec("quadprog") is None
        or importlib.util.find_spec("qpsolvers") is None
    ):
        return None
    import torchjd.aggregation as ta

    weighting: Callable[[torch.Tensor], torch.Tensor] = getattr(ta, f"{method}Weighting")()
    return weighting


def _bind(
    fn: Callable[[torch.Tensor], torch.Tensor], gramian: torch.Tensor
) -> Callable[[], torch.Tensor]:
    return lambda: fn(gramian)


def run(quick: bool = False, threads: int | None = 1) -> list[Result]:
    """Time each weighting at each K; ratios are to TorchJD (or to ours without TorchJD).

    Args:
        quick: K = 16 and 80 only, few steps (a smoke run for CI).
        threads: torch intra-op threads for the run (None: torch's default, unchanged); the
            rows carry it in ``extra["threads"]``.

    Returns:
        One row per (method, K, case).

    Example:
        >>> rows = run(quick=True)  # doctest: +SKIP
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    try:
        rows = _run((16, 80) if quick else (16, 80, 256), quick)
    finally:
        torch.set_num_threads(before)
    for row in rows:
        row.extra["threads"] = used
    return rows


def _run(sizes: tuple[int, ...], quick: bool) -> list[Result]:
    rows: list[Result] = []
    for k in sizes:
        gramian = _gramian(k)
        big = k >= 256
        steps, warmup = (3, 1) if quick or big else (15, 3)
        for method in METHODS:
            cases: dict[str, Callable[[], object]] = {}
            reference = _torchjd(method)
            if reference is not None:
                cases["torchjd"] = _bind(reference, gramian)
            if method in ("UPGrad", "DualProj"):
                cold = getattr(aggregators, method)(warm_start=False)
                warm = getattr(aggregators, method)()
                cases["labelgrad"] = _bind(cold.weights, gramian)
                cases["labelgrad (warm, same G)"] = _bind(warm.weights, gramian)
            else:
                ours = getattr(aggregators, method)()
                cases["labelgrad"] = _bind(ours.weights, gramian)
            times = interleaved(cases, steps=steps, warmup=warmup)
            baseline = "torchjd" if "torchjd" in times else "labelgrad"
            rows += ratios(f"weightings/{method}/K={k}", times, baseline, K=k)
    return rows
