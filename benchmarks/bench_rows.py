"""RowRules (half the classes frozen, lr_scale, skip_absent) vs the bare optimizer.

Reports every figure at torch's default thread count and at 1 thread, with warm optimizer state
(every row trained before) and zero state (rows frozen from the start, classes never seen: their
Adam moments are exactly 0), the machine's load (``os.getloadavg``), and the aten operator count
of one optimizer step (torch.profiler, nested operators included) for AdamW (foreach) and SGD
(momentum, Nesterov, foreach), with class-index labels and with float multi-hot labels holding
-1 for unknown (what BCE takes).

Run: PYTHONPATH=src python benchmarks/bench_rows.py [--quick] [--runs N]
With ``--runs N`` the whole interleaved comparison runs N times (each thread count in turn) and a
summary gives the best ratio of each line with the spread over the runs.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import labelgrad as lg
from labelgrad.app.bench.rows import run
from labelgrad.app.bench.timing import Result, best_of, format_table

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05, foreach=True),
    "sgd": lambda p: torch.optim.SGD(
        p, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=0.05, foreach=True
    ),
}


def _step_case(
    name: str, rules: bool, quick: bool, warm: bool = True, labels: str = "index"
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    width, c, inp, batch = (64, 100, 32, 32) if quick else (2048, 1000, 512, 128)
    torch.manual_seed(1)
    head = nn.Linear(width, c)
    model = nn.Sequential(
        nn.Linear(inp, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), head
    )
    opt = OPTIMIZERS[name](list(model.parameters()))
    x, y = torch.randn(batch, inp), torch.randint(0, c if warm else c // 8, (batch,))
    target = y
    if labels == "float":
        target = torch.zeros(batch, c)
        target[torch.arange(batch), y] = 1.0
        target[:, c // 8 : c // 4] = -1.0  # unknown
    for _ in range(2 if warm else 0):  # every row has state, as after earlier training
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), torch.arange(batch) % c).backward()
        opt.step()
    if rules:
        opt = lg.RowRules(
            opt,
            rows=head,
            frozen=torch.arange(0, c, 2),
            lr_scale=torch.rand(c) + 0.5,
            skip_absent=True,
        )
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    if isinstance(opt, lg.RowRules):
        rr = opt
        return lambda: rr.step(targets=target), opt
    return lambda: opt.step(), opt


def aten_ops(fn: Callable[[], None]) -> int:
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def sgd_and_ops(
    quick: bool, warm: bool = True, labels: str = "index"
) -> tuple[list[str], list[Result]]:
    """Optimizer step alone, interleaved medians, and aten operator counts."""
    lines, results = [], []
    steps = 3 if quick else 25
    for name in OPTIMIZERS:
        bare, _ = _step_case(name, False, quick, warm)
        rows, _ = _step_case(name, True, quick, warm, labels)
        times: dict[str, list[float]] = {"bare": [], "rows": []}
        for _ in range(3):
            bare()
            rows()
        for _ in range(steps):
            for case, fn in (("bare", bare), ("rows", rows)):
                t0 = time.perf_counter()
                fn()
                times[case].append(time.perf_counter() - t0)
        b, r = statistics.median(times["bare"]), statistics.median(times["rows"])
        ob, orow = aten_ops(bare), aten_ops(rows)
        state = "warm" if warm else "zero"
        results.append(
            Result(f"rows/step-alone/{name}/{state}/{labels}", "RowRules", r * 1e3, r / b)
        )
        lines.append(
            f"{name:>6} ({state} state, {labels} labels) optimizer step: bare {b * 1e3:8.2f} ms, "
            f"RowRules {r * 1e3:8.2f} ms "
            f"({r / b:.3f}x); aten ops {orow} vs {ob} ({orow / ob:.2f}x)"
        )
    return lines, results


def main(quick: bool, runs: int = 1) -> None:
    default = torch.get_num_threads()
    flush = torch.set_flush_denormal(True)
    collected: dict[int, list[list[Result]]] = {}
    try:
        for index in range(runs):
            for threads in dict.fromkeys((default, 1)):
                torch.set_num_threads(threads)
                load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
                print(
                    f"## run {index + 1}/{runs}, threads = {threads} (torch default: {default}); "
                    f"load average {load}"
                )
                this_run: list[Result] = []
                for state in ("warm", "zero"):
                    rows = run(quick=quick, state=state)
                    this_run += rows
                    print(format_table(rows))
                    for labels in ("index", "float"):
                        lines, results = sgd_and_ops(quick, state == "warm", labels)
                        this_run += results
                        print("\n".join(lines))
                collected.setdefault(threads, []).append(this_run)
                print()
        if runs > 1:
            for threads, per_run in collected.items():
                print(f"## best of {runs} runs (spread), threads = {threads}")
                print(format_table(best_of(per_run)))
    finally:
        torch.set_num_threads(default)
        if flush:
            torch.set_flush_denormal(False)


if __name__ == "__main__":
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 1
    if runs < 1:
        raise SystemExit("--runs must be a positive integer")
    main(quick="--quick" in sys.argv, runs=runs)
