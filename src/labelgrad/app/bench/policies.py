"""Level-1 benchmark: a training step with and without a chain of policies at the logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.app.bench.timing import Result, best_of, interleaved, ratios

__all__ = ["aten_ops", "run"]


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
            run (:func:`~labelgrad.app.bench.timing.best_of`: the lowest median and the lowest
            ratio, each run's ratio being to that run's plain step) and, in ``extra``, every
            run's ratio (``ratio_runs``) and their range (``spread``).

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
        for r in best_of(per_run):
            added = ops[name][r.case] - ops[name]["plain"]
            dtype = "float32" if r.case.endswith("float labels") else "int64"
            r.extra.update(
                threads=threads, aten_ops=ops[name][r.case], added_ops=added, labels=dtype
            )
            r.case = f"{r.case} +{added} ops" if added else f"{r.case} {ops[name][r.case]} ops"
            rows.append(r)
    return rows
