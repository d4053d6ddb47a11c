"""Benchmark of the aggregation engines on an MLP (issue 4 (b), issue 5 (a), (b)).

MLP 256-512-512 trunk, batch 256, Linear head. Cases, timed interleaved in one process:

- ``plain``: forward, mean loss, backward, SGD step (the baseline);
- ``exact``: ``lg.aggregate_backward(engine="exact")``;
- ``loop``: LibMTL-style loop of K backward passes to the shared parameters, Gramian, weights;
- ``torchjd``: TorchJD 0.18 ``mtl_backward`` + ``jac_to_grad`` with UPGrad (and with Mean, to
  separate the engine from the weighting solve);
- ``representation``: closed-form representation engine (K = 16 and K = 80);
- ``amortized-8``: exact engine, weights recomputed every 8 steps;
- ``sample_gramian`` (single-label, 10 and 100 class groups) vs exact and TorchJD.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.app.bench.policies import aten_ops
from labelgrad.app.bench.timing import Result, interleaved, ratios

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
    x = torch.randn(256, 256, generator=g)
    y = (torch.rand(256, k, generator=g) < 0.2).long()
    weighting, wname = _weighting()
    amortized = lg.aggregation.Amortized(weighting, every=8)

    def plain() -> None:
        F.binary_cross_entropy_with_logits(head(trunk(x)), y.float()).backward()
        _step(params)

    def exact() -> None:
        losses = lg.per_label_losses(head(trunk(x)), y)
        lg.aggregate_backward(losses, shared=shared, aggregator=weighting, engine="exact")
        _step(params)

    def amortized_exact() -> None:
        losses = lg.per_label_losses(head(trunk(x)), y)
        lg.aggregate_backward(losses, shared=shared, aggregator=amortized, engine="exact")
        _step(params)

    def representation_with(agg: Any, labels: Tensor = y) -> Callable[[], None]:
        def representation() -> None:
            feats = trunk(x)
            losses = lg.per_label_losses(head(feats), labels)
            lg.aggregate_backward(losses, shared=shared, aggregator=agg, features=feats, head=head)
            _step(params)

        return representation

    cases: dict[str, Callable[[], object]] = {"plain": plain}
    if k <= 16:
        loop = _libmtl_loop(trunk, head, x, y, weighting)
        cases.update({"exact": exact, "loop": loop, "amortized-8": amortized_exact})
    cases["representation"] = representation_with(weighting)
    # Float labels, as BCE takes them (what users pass): the same engine and weighting.
    cases["representation (float labels)"] = representation_with(weighting, y.float())
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
    x = torch.randn(256, 256, generator=g)
    y = torch.randint(0, c, (256,), generator=g)
    groups = torch.arange(c) % k
    weighting, _ = _weighting()
    lg.aggregation.track(trunk)
    shared = list(trunk.parameters())

    def plain() -> None:
        F.cross_entropy(head(trunk(x)), y).backward()
        _step(params)

    def sample_gramian_with(agg: Any) -> Callable[[], None]:
        def sample_gramian() -> None:
            losses = lg.per_label_losses(head(trunk(x)), y, loss="ce", groups=groups)
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


def run(quick: bool = False) -> list[Result]:
    """Time the engines; ``quick``: fewer steps, no K = 100 single-label or its TorchJD peer."""
    steps, warmup = (3, 1) if quick else (30, 5)
    rows: list[Result] = []
    for k in (16, 80):
        cases, wname = _multilabel_cases(k, quick)
        times = interleaved(cases, steps=steps, warmup=warmup)
        found = ratios(f"aggregation/mlp-multilabel K={k}", times, "plain", weighting=wname)
        for r in found:  # deterministic, unlike the times on a shared machine
            r.extra["aten_ops"] = aten_ops(cases[r.case])
        rows += found
    for k in (10,) if quick else (10, 100):
        cases = _single_label_cases(k, with_torchjd=not quick)
        times = interleaved(cases, steps=max(1, steps // 2), warmup=warmup)
        rows += ratios(f"aggregation/mlp-single-label K={k}", times, "plain", weighting=wname)
    return rows
