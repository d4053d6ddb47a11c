"""Level-1 benchmark: a training step with and without a chain of policies at the logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.app.bench.timing import Result, interleaved, ratios

__all__ = ["aten_ops", "format_runs", "run"]


def _mlp(d_in: int, hidden: int, c: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, c),
    )  # fmt: skip


def _cnn(c: int, width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 7 * 7, c),
    )  # fmt: skip


def _policy(c: int) -> lg.Chain:
    weights = torch.linspace(0.5, 2.0, c)
    return lg.chain(
        lg.mask_unknown(), lg.class_weights(weights), lg.eqlv2(num_classes=c),
        lg.clip_per_class(1.0),
    )  # fmt: skip


def _step(model: nn.Module, policy: lg.Policy | None, x: Tensor, y: Tensor) -> Callable[[], None]:
    target = y.clamp(min=0).float()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(x)
        if policy is not None:
            logits = policy(logits, y)
        F.binary_cross_entropy_with_logits(logits, target).backward()

    return step


def aten_ops(step: Callable[[], object]) -> int:
    """The number of aten operators one call of ``step`` runs (nested ones included)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def _thread_counts() -> list[int]:
    """torch's default thread count (what users run), then 1."""
    default = torch.get_num_threads()
    return [default] if default == 1 else [default, 1]


def run(quick: bool = False, runs: int = 1) -> list[Result]:
    """Time plain vs policy-chain training steps (CPU), at the default thread count and at 1.

    The chain reads partial multi-hot labels (-1 = unknown) twice: as int64 and as float32 (what
    ``BCEWithLogitsLoss`` takes, so what users pass), on a small MLP (256-512-512 -> 100, where
    fixed costs dominate), a large one (784-1024-1024 -> 100) and a small CNN. Each row's
    ``extra`` holds the thread count, the labels' dtype and the aten operators of one step
    (``aten_ops``; ``added_ops`` = the chain's minus the plain step's).

    Args:
        quick: tiny sizes and few steps (a smoke run, not a measurement).
        runs: how many times the whole interleaved comparison is repeated (each run times
            every case of every configuration again, round-robin). Each row then gives the best
            run (the lowest median, and the lowest ratio, each run's ratio being to that
            run's plain step) and, in ``extra``, every run's ratio and median (``ratios``,
            ``medians_ms``) and the spread of the ratios (``ratio_spread`` = highest - lowest).

    Returns:
        One row per case and thread count, with the ratio to the plain step.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be an int >= 1, got {runs!r}")
    torch.manual_seed(0)
    c = 100
    steps, warmup = (3, 1) if quick else (60, 10)
    batch = 16 if quick else 256
    g = torch.Generator().manual_seed(0)
    y = torch.randint(-1, 2, (batch, c), generator=g)  # partial multi-hot labels
    big, small, channels = (64, 32, 4) if quick else (1024, 512, 32)
    # The labels name what runs: a quick run's tiny models too (and its batch, not the 256 of
    # the documented figures).
    tag = f", batch {batch}" if quick else ""
    configs = {
        f"policies/mlp 784-{big}-{big}{tag}": (
            _mlp(784, big, c),
            torch.randn(batch, 784, generator=g),
        ),
        f"policies/mlp 256-{small}-{small}{tag}": (
            _mlp(256, small, c),
            torch.randn(batch, 256, generator=g),
        ),
        "policies/cnn 28x28" + (f" {channels} ch{tag}" if quick else ""): (
            _cnn(c, channels),
            torch.randn(batch, 1, 28, 28, generator=g),
        ),
    }
    all_cases = {
        name: {
            "plain": _step(model, None, x, y),
            "chain(mask,weights,eqlv2,clip)": _step(model, _policy(c), x, y),
            "chain(mask,weights,eqlv2,clip) float labels": _step(model, _policy(c), x, y.float()),
        }
        for name, (model, x) in configs.items()
    }
    ops = {
        name: {case: aten_ops(fn) for case, fn in cases.items()}
        for name, cases in all_cases.items()
    }
    default_threads = torch.get_num_threads()
    # (config, threads) -> one list of rows per run, in the same order every run.
    found: dict[tuple[str, int], list[list[Result]]] = {}
    for _ in range(runs):
        for name, cases in all_cases.items():
            for threads in _thread_counts():
                torch.set_num_threads(threads)
                try:
                    times = interleaved(cases, steps=steps, warmup=warmup)
                finally:
                    torch.set_num_threads(default_threads)
                label = f"{name} ({threads} thr)"
                found.setdefault((name, threads), []).append(
                    ratios(label, times, "plain", batch=batch, num_classes=c)
                )
    rows: list[Result] = []
    for (name, threads), per_run in found.items():
        for i, first in enumerate(per_run[0]):
            repeats = [run_rows[i] for run_rows in per_run]
            # Each best on its own: the lowest median step time, and the lowest ratio (each
            # run's ratio is to the plain step of the same run).
            best_ms = min(x.median_ms for x in repeats)
            best_ratio = min(x.ratio for x in repeats)
            r = Result(first.benchmark, first.case, best_ms, best_ratio, dict(first.extra))
            added = ops[name][r.case] - ops[name]["plain"]
            dtype = "float32" if r.case.endswith("float labels") else "int64"
            spread = max(x.ratio for x in repeats) - min(x.ratio for x in repeats)
            r.extra.update(
                threads=threads,
                aten_ops=ops[name][r.case],
                added_ops=added,
                labels=dtype,
                runs=runs,
                ratios=[round(x.ratio, 4) for x in repeats],
                medians_ms=[round(x.median_ms, 4) for x in repeats],
                ratio_spread=round(spread, 4),
            )
            r.case = f"{r.case} +{added} ops" if added else f"{r.case} {ops[name][r.case]} ops"
            rows.append(r)
    return rows


def format_runs(rows: list[Result]) -> str:
    """A table of :func:`run`'s rows with the best run and the spread over runs.

    Example:
        >>> r = Result("policies/mlp", "chain", 3.1, 1.05, {"ratios": [1.05, 1.08]})
        >>> print(format_runs([r]))  # doctest: +NORMALIZE_WHITESPACE
        benchmark     case   best ms  best ratio  spread  ratios (each run)
        policies/mlp  chain    3.100       1.05x   0.030  1.05 1.08
    """
    lines = [
        f"{'benchmark':<42} {'case':<50} {'best ms':>8} {'best ratio':>10} {'spread':>7}  "
        "ratios (each run)"
    ]
    for r in rows:
        each = r.extra.get("ratios", [r.ratio])
        spread = max(each) - min(each)
        lines.append(
            f"{r.benchmark:<42} {r.case:<50} {r.median_ms:>8.3f} {r.ratio:>9.2f}x {spread:>7.3f}  "
            + " ".join(f"{x:.2f}" for x in each)
        )
    return "\n".join(lines)
