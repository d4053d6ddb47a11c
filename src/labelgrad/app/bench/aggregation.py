"""Benchmark of the aggregation engines on an MLP (issue 4 (b), issue 5 (a), (b), issue 24).

MLP 256-512-512 trunk, batch 256, Linear head. Cases, timed interleaved in one process:

- ``plain``: forward, mean loss, backward, SGD step (the baseline);
- ``exact``: ``lg.aggregate_backward(engine="exact")``;
- ``loop``: LibMTL-style loop of K backward passes to the shared parameters, Gramian, weights;
- ``torchjd``: TorchJD 0.18 ``mtl_backward`` + ``jac_to_grad`` with UPGrad (and with Mean, to
  separate the engine from the weighting solve);
- ``representation`` (P3r): closed-form representation engine (K = 16 and K = 80), int
  multi-hot labels, with float labels, and with ``Mean`` (the engine alone, no solve);
- ``amortized-8``: exact engine, weights recomputed every 8 steps;
- ``sample_gramian`` (P4: single-label, 100 classes in 10 and 100 class groups, class-index
  labels) with UPGrad and with ``Mean``, vs exact and TorchJD.

``plain``, ``representation`` and ``sample_gramian`` walk the same pool of 8 batches, one per
step, as training does (a repeated batch lets the solver's warm start settle at once); the
references (exact, loop, TorchJD) time one batch.

Every case is timed at torch's default thread count and at 1 thread, and each row carries the
aten operators of one step; ``run(runs=N)`` repeats each interleaved comparison N times and
reports the best ratio and the spread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.app.bench.policies import aten_ops
from labelgrad.app.bench.timing import Result, best_of, interleaved, ratios

__all__ = ["run"]


class _MeanWeighting:
    """w = 1/K (TorchJD's Mean): used when ``lg.aggregators`` is not available."""

    def weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        return torch.full((k,), 1.0 / k, dtype=gramian.dtype, device=gramian.device)


def _weighting() -> tuple[Any, str]:
    aggregators = getattr(lg, "aggregators", None)
    if aggregators is not None and hasattr(aggregators, "UPGrad"):
        return aggregators.UPGrad(), "UPGrad"
    return _MeanWeighting(), "Mean (lg.aggregators not available)"


def _mlp(num_classes: int, seed: int = 0) -> tuple[nn.Module, nn.Linear]:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
    return trunk, nn.Linear(512, num_classes)


def _cycle(pool: Sequence[tuple[Tensor, Tensor]]) -> Callable[[], tuple[Tensor, Tensor]]:
    """The batches of ``pool`` in turn, one per call: each case walks the same sequence.

    A training run's Gramians change from step to step with the batch; a repeated batch would
    let a solver's warm start settle at once, which training does not see (issue 24: take the
    solve's figures on Gramians like a training run's).
    """
    state = {"i": -1}

    def next_batch() -> tuple[Tensor, Tensor]:
        state["i"] = (state["i"] + 1) % len(pool)
        return pool[state["i"]]

    return next_batch


def _step(params: Sequence[Tensor], lr: float = 1e-3) -> None:
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
                p.grad = None


def _libmtl_loop(
    trunk: nn.Module, head: nn.Module, x: Tensor, y: Tensor, weighting: Any
) -> Callable[[], None]:
    """LibMTL's way: one backward per task, flattened and stacked, then the weighting."""
    params = [*trunk.parameters(), *head.parameters()]
    shared = list(trunk.parameters())

    def loop() -> None:
        losses = lg.per_label_losses(head(trunk(x)), y)
        rows = []
        for i in range(losses.shape[0]):
            grads = torch.autograd.grad(losses[i], shared, retain_graph=True)
            rows.append(torch.cat([gr.reshape(-1) for gr in grads]))
        jac = torch.stack(rows)
        w = weighting.weights(jac @ jac.T)
        update = w @ jac
        torch.autograd.backward(losses.sum(), inputs=list(head.parameters()))
        for p, u in zip(shared, update.split([p.numel() for p in shared])):
            p.grad = u.view_as(p)
        _step(params)

    return loop


def _torchjd_cases(
    trunk: nn.Module, head: nn.Module, x: Tensor, y: Tensor
) -> dict[str, Callable[[], object]]:
    """TorchJD's mtl_backward with UPGrad and Mean, or nothing where TorchJD is not installed."""
    try:
        from torchjd.aggregation import Mean as JDMean
        from torchjd.aggregation import UPGrad as JDUPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward
    except ImportError:  # pragma: no cover - optional dependency
        return {}
    params = [*trunk.parameters(), *head.parameters()]
    shared = list(trunk.parameters())

    def torchjd_case(agg: Any) -> Callable[[], None]:
        def run_jd() -> None:
            feats = trunk(x)
            losses = lg.per_label_losses(head(feats), y)
            mtl_backward(list(losses.unbind()), features=feats, retain_graph=True)
            jac_to_grad(shared, agg)
            _step(params)

        return run_jd

    return {"torchjd-upgrad": torchjd_case(JDUPGrad()), "torchjd-mean": torchjd_case(JDMean())}


def _multilabel_cases(k: int, quick: bool) -> tuple[dict[str, Callable[[], object]], str]:
    trunk, head = _mlp(k)
    params = [*trunk.parameters(), *head.parameters()]
    shared = list(trunk.parameters())
    g = torch.Generator().manual_seed(1)
    pool = [
        (torch.randn(256, 256, generator=g), (torch.rand(256, k, generator=g) < 0.2).long())
        for _ in range(8)
    ]
    x, y = pool[0]  # the references (exact, loop, TorchJD) time one batch
    weighting, wname = _weighting()
    amortized = lg.aggregation.Amortized(weighting, every=8)
    plain_batch = _cycle(pool)

    def plain() -> None:
        xb, yb = plain_batch()
        F.binary_cross_entropy_with_logits(head(trunk(xb)), yb.float()).backward()
        _step(params)

    def exact() -> None:
        losses = lg.per_label_losses(head(trunk(x)), y)
        lg.aggregate_backward(losses, shared=shared, aggregator=weighting, engine="exact")
        _step(params)

    def amortized_exact() -> None:
        losses = lg.per_label_losses(head(trunk(x)), y)
        lg.aggregate_backward(losses, shared=shared, aggregator=amortized, engine="exact")
        _step(params)

    def representation_with(agg: Any, float_labels: bool = False) -> Callable[[], None]:
        batch = _cycle(pool)

        def representation() -> None:
            xb, yb = batch()
            feats = trunk(xb)
            losses = lg.per_label_losses(head(feats), yb.float() if float_labels else yb)
            lg.aggregate_backward(losses, shared=shared, aggregator=agg, features=feats, head=head)
            _step(params)

        return representation

    cases: dict[str, Callable[[], object]] = {"plain": plain}
    if k <= 16:
        loop = _libmtl_loop(trunk, head, x, y, weighting)
        cases.update({"exact": exact, "loop": loop, "amortized-8": amortized_exact})
    cases["representation"] = representation_with(weighting)
    # Float labels, as BCE takes them (what users pass): the same engine and weighting.
    cases["representation (float labels)"] = representation_with(weighting, float_labels=True)
    # The same engine with w = 1/K: the engine's own cost, without the weighting solve.
    cases["representation (Mean)"] = representation_with(_MeanWeighting())
    if k <= 16:
        cases.update(_torchjd_cases(trunk, head, x, y))
    return cases, wname


def _single_label_cases(k: int, with_torchjd: bool) -> dict[str, Callable[[], object]]:
    c = 100
    trunk, head = _mlp(c)
    params = [*trunk.parameters(), *head.parameters()]
    g = torch.Generator().manual_seed(2)
    pool = [
        (torch.randn(256, 256, generator=g), torch.randint(0, c, (256,), generator=g))
        for _ in range(8)
    ]
    x, y = pool[0]  # the references (exact, TorchJD) time one batch
    groups = torch.arange(c) % k
    weighting, _ = _weighting()
    lg.aggregation.track(trunk)
    shared = list(trunk.parameters())
    plain_batch = _cycle(pool)

    def plain() -> None:
        xb, yb = plain_batch()
        F.cross_entropy(head(trunk(xb)), yb).backward()
        _step(params)

    def sample_gramian_with(agg: Any) -> Callable[[], None]:
        batch = _cycle(pool)

        def sample_gramian() -> None:
            xb, yb = batch()
            losses = lg.per_label_losses(head(trunk(xb)), yb, loss="ce", groups=groups)
            lg.aggregate_backward(losses, shared=trunk, aggregator=agg, engine="sample_gramian")
            _step(params)

        return sample_gramian

    def exact() -> None:
        losses = lg.per_label_losses(head(trunk(x)), y, loss="ce", groups=groups)
        lg.aggregate_backward(losses, shared=trunk, aggregator=weighting, engine="exact")
        _step(params)

    cases: dict[str, Callable[[], object]] = {
        "plain": plain,
        "sample_gramian": sample_gramian_with(weighting),
        "sample_gramian (Mean)": sample_gramian_with(_MeanWeighting()),
        "exact": exact,
    }
    if not with_torchjd:
        return cases
    try:
        from torchjd.aggregation import UPGrad as JDUPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward
    except ImportError:  # pragma: no cover - optional dependency
        return cases
    jd = JDUPGrad()

    def torchjd_upgrad() -> None:
        feats = trunk(x)
        losses = lg.per_label_losses(head(feats), y, loss="ce", groups=groups)
        mtl_backward(list(losses.unbind()), features=feats, retain_graph=True)
        jac_to_grad(shared, jd)
        _step(params)

    cases["torchjd-upgrad"] = torchjd_upgrad
    return cases


_Build = Callable[[], tuple[dict[str, Callable[[], object]], str]]


def _benchmarks(quick: bool) -> list[tuple[str, _Build]]:
    """(benchmark label, builder of its cases and the weighting's name), in report order."""

    def multilabel(k: int) -> _Build:
        return lambda: _multilabel_cases(k, quick)

    def single_label(k: int) -> _Build:
        return lambda: (_single_label_cases(k, with_torchjd=not quick), _weighting()[1])

    found = [(f"aggregation/mlp-multilabel K={k}", multilabel(k)) for k in (16, 80)]
    for k in (10,) if quick else (10, 100):
        found.append((f"aggregation/mlp-single-label K={k}", single_label(k)))
    return found


def _thread_counts() -> list[int]:
    """torch's default thread count (what users run), then 1."""
    default = torch.get_num_threads()
    return [default] if default == 1 else [default, 1]


def _best_of(
    benchmark: str,
    per_run: list[dict[str, float]],
    ops: dict[str, int],
    **extra: Any,
) -> list[Result]:
    """One row per case: :func:`~labelgrad.app.bench.timing.best_of` of the runs' ratios to
    ``plain`` (each within its run), with the aten operators of one step in the case name."""
    rows = best_of([ratios(benchmark, times, "plain", **extra) for times in per_run])
    for r in rows:
        added = ops[r.case] - ops["plain"]
        r.extra.update(aten_ops=ops[r.case], added_ops=added)
        r.case = f"{r.case} +{added} ops" if added else f"{r.case} {ops[r.case]} ops"
    return rows


def run(quick: bool = False, runs: int = 1, threads: Sequence[int] | None = None) -> list[Result]:
    """Time the engines against the plain step, interleaved, at each thread count.

    Cases per benchmark: ``plain``; the representation engine (P3r, closed form, K = 16 and 80)
    with the weighting (``UPGrad``), with float labels, and with ``Mean`` (the engine alone,
    without the solve); the sample-Gramian engine (P4, 100 classes in 10 or 100 class groups)
    with ``UPGrad`` and with ``Mean``; and the references (exact engine, LibMTL-style loop,
    Amortized, TorchJD where installed). Each row's ``extra`` holds the thread count, the aten
    operators of one step (``aten_ops``; ``added_ops``: minus the plain step's), and over
    ``runs`` repetitions of the whole interleaved comparison the ratio of each run
    (``ratio_runs``) and their range (``spread``); the row's ratio is the best run's.

    Args:
        quick: few steps, the default thread count only, no K = 100 single-label case or
            TorchJD peers (a smoke run, not a measurement).
        runs: repetitions of each interleaved comparison (>= 1).
        threads: thread counts to time at; default: torch's default, then 1 (quick: the default).

    Returns:
        One row per benchmark, thread count and case.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive int, got {runs!r}")
    steps, warmup = (3, 1) if quick else (30, 5)
    default = torch.get_num_threads()
    counts = list(threads) if threads else ([default] if quick else _thread_counts())
    rows: list[Result] = []
    for label, build in _benchmarks(quick):
        cases, wname = build()
        n = steps if "multilabel" in label else max(1, steps // 2)
        timed: list[tuple[int, list[dict[str, float]]]] = []
        for count in counts:
            torch.set_num_threads(count)
            try:
                timed.append(
                    (count, [interleaved(cases, steps=n, warmup=warmup) for _ in range(runs)])
                )
            finally:
                torch.set_num_threads(default)
        # Counted after the timing: the profiler's start and stop slow the steps that follow.
        ops = {case: aten_ops(fn) for case, fn in cases.items()}  # deterministic, unlike times
        for count, per_run in timed:
            bench = f"{label} ({count} thr)"
            rows += _best_of(bench, per_run, ops, weighting=wname, threads=count)
    return rows
