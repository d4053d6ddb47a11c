"""Benchmark (a): weighting solve time vs TorchJD 0.18 at K = 16, 80, 256.

Same Gramians for both, one process, interleaved medians (:func:`interleaved`), at a given
torch intra-op thread count (default: one) (TorchJD's solvers, quadprog and Python loops, are
single-threaded; on a shared 2-core machine torch's thread pool otherwise thrashes). UPGrad and
DualProj run cold (``warm_start=False``: every call solves from scratch) and, as a separate case,
warm (the active sets of the previous call on the same G: the steady state of training when the
Gramian changes slowly). TorchJD cases are skipped when it (or quadprog) is not installed.

The ``sequence`` rows time UPGrad over Gramians recorded from a training run
(:func:`training_gramians`, K = 16, 80, 100): one call per recorded step, in order, so that each
call starts from the state the previous step left (what an engine sees); the median is per call.
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


def training_gramians(k: int, steps: int = 40, seed: int = 0) -> list[torch.Tensor]:
    """Per-label Gramians of a small multi-label MLP's representation, one per training step.

    A seeded synthetic task (2048 samples, 32 features, K labels from a random linear teacher
    with long-tailed frequencies), an MLP 32-64-64 with a K-way head, BCE, Adam (lr 3e-3),
    batches of 128. At each step, before the update, ``G = (E^T E) ⊙ (W W^T)`` with ``E`` the
    (N, K) gradient of the K per-label mean losses at the logits and ``W`` the head's weight: the
    Gramian of the per-label gradients at the representation (what the representation engine
    builds), in float32.

    Args:
        k: the number of labels K.
        steps: training steps recorded.
        seed: seeds the data, the model and the batches.

    Returns:
        ``steps`` (K, K) float32 Gramians, in training order.

    Example:
        >>> [g.shape for g in training_gramians(4, steps=2)]
        [torch.Size([4, 4]), torch.Size([4, 4])]
    """
    gen = torch.Generator().manual_seed(seed)
    n_all, d_in, width, batch = 2048, 32, 64, 128
    x_all = torch.randn(n_all, d_in, generator=gen)
    teacher = torch.randn(d_in, k, generator=gen) / d_in**0.5
    noise = 0.3 * torch.randn(n_all, k, generator=gen)
    y_all = (x_all @ teacher + noise > torch.linspace(0.5, 3.0, k)).float()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trunk = torch.nn.Sequential(
            torch.nn.Linear(d_in, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
        )
        head = torch.nn.Linear(width, k)
    opt = torch.optim.Adam([*trunk.parameters(), *head.parameters()], lr=3e-3)
    recorded = []
    for _ in range(steps):
        index = torch.randint(0, n_all, (batch,), generator=gen)
        logits = head(trunk(x_all[index]))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_all[index])
        with torch.no_grad():
            e = (torch.sigmoid(logits) - y_all[index]) / batch
            recorded.append((e.T @ e) * (head.weight @ head.weight.T))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return recorded


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
        One row per (method, K, case), then the ``sequence`` rows (UPGrad over the Gramians
        of a training run, per call).

    Example:
        >>> rows = run(quick=True)  # doctest: +SKIP
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    try:
        rows = _run((16, 80) if quick else (16, 80, 256), quick)
        rows += _run_sequences((16, 80) if quick else (16, 80, 100), quick)
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


def _replay(
    fn: Callable[[torch.Tensor], torch.Tensor], sequence: list[torch.Tensor]
) -> Callable[[], None]:
    """One call per Gramian of ``sequence``, in order (the caller divides by its length)."""

    def run() -> None:
        for gramian in sequence:
            fn(gramian)

    return run


def _run_sequences(sizes: tuple[int, ...], quick: bool) -> list[Result]:
    rows: list[Result] = []
    for k in sizes:
        sequence = training_gramians(k, steps=12 if quick else 40)
        cases: dict[str, Callable[[], object]] = {}
        reference = _torchjd("UPGrad")
        if reference is not None:
            cases["torchjd"] = _replay(reference, sequence)
        cases["labelgrad"] = _replay(aggregators.UPGrad().weights, sequence)
        cases["labelgrad (warm_start=False)"] = _replay(
            aggregators.UPGrad(warm_start=False).weights, sequence
        )
        times = interleaved(cases, steps=2 if quick else 5, warmup=1)
        per_call = {name: t / len(sequence) for name, t in times.items()}
        baseline = "torchjd" if "torchjd" in per_call else "labelgrad"
        rows += ratios(
            f"weightings/UPGrad/sequence/K={k}", per_call, baseline, K=k, steps=len(sequence)
        )
    return rows
