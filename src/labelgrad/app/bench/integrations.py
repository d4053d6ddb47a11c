"""Integration benchmark: the cost of an accumulation window around stateful policies."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.app.bench.timing import Result, interleaved, ratios

__all__ = ["run"]


def _accumulated_step(
    model: nn.Module, policy: lg.Policy | None, window: bool, x: Tensor, y: Tensor, k: int
) -> Callable[[], None]:
    target = y.clamp(min=0).float()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        ctx = lg.accumulation_window(policy) if window and policy is not None else None
        with ctx or contextlib.nullcontext():
            for xs, ys, ts in zip(x.chunk(k), y.chunk(k), target.chunk(k)):
                logits = model(xs)
                if policy is not None:
                    logits = policy(logits, ys)
                (F.binary_cross_entropy_with_logits(logits, ts) / k).backward()

    return step


def run(quick: bool = False) -> list[Result]:
    """Time k accumulated micro-batches: plain, with a policy chain, and inside a window (CPU).

    Args:
        quick: tiny sizes and few steps (a smoke run, not a measurement).

    Returns:
        One row per case, with the ratio to the plain accumulated step.
    """
    torch.manual_seed(0)
    c, k = 100, 4
    steps, warmup = (3, 1) if quick else (40, 8)
    batch, hidden = (16, 32) if quick else (256, 1024)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 784, generator=g)
    y = torch.randint(-1, 2, (batch, c), generator=g)
    model = nn.Sequential(
        nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, c),
    )  # fmt: skip
    policy = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=c), lg.monitor(num_classes=c))
    times = interleaved(
        {
            "plain": _accumulated_step(model, None, False, x, y, k),
            "chain(mask,eqlv2,monitor)": _accumulated_step(model, policy, False, x, y, k),
            "chain in accumulation_window": _accumulated_step(model, policy, True, x, y, k),
        },
        steps=steps,
        warmup=warmup,
    )
    return ratios(f"accumulation/mlp k={k}", times, "plain", batch=batch, num_classes=c)
