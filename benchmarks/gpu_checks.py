"""Every GPU check of labelgrad in one run: correctness, host syncs, speed and memory on CUDA.

Run once when a machine with a GPU is lent (the figures go to the issue and benchmarks/README):

    PYTHONPATH=src python benchmarks/gpu_checks.py --out "$OUT/gpu_checks.json"

On a ResNet-18 (CIFAR layout, 100 classes, batch 128) it checks, each against an independent
reference, then times against the plain step (interleaved medians, CUDA events):

1. the policy chain (`mask_unknown`, `class_weights`, `eqlv2`, `clip_per_class`) on multi-hot
   BCE labels with unknowns: gradient equal to autograd of the reweighted loss (first step, while
   EQLv2 still weighs 1), no host-device sync in forward and backward (`set_sync_debug_mode`),
   the same under AMP with a GradScaler;
2. `RowRules` (AdamW foreach, half the classes frozen, lr_scale, skip_absent) with zero and with
   warm optimizer state: frozen and absent rows bitwise still, no host sync in the step;
3. `aggregate_backward` with UPGrad on K = 16 label groups, the representation and the exact
   engines: the exact engine's shared gradient equal to J^T w computed from per-loss autograd
   rows, TorchJD 0.18 timed beside it where it is installed;
4. the peak memory of each case (`torch.cuda.max_memory_allocated`).

`--device cpu --quick` runs the same pipeline small on a CPU (the test suite does, so the script
keeps working between the rare runs on a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelgrad as lg


def _block(cin: int, cout: int, stride: int) -> nn.Module:
    class Basic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.skip = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: Tensor) -> Tensor:
            return F.relu(self.body(x) + self.skip(x))

    return Basic()


class ResNet18(nn.Module):
    """ResNet-18 in the CIFAR layout (3x3 stem, no max-pool); ``width`` scales every stage."""

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [
            nn.Conv2d(3, w[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(inplace=True),
        ]
        cin = w[0]
        for i, cout in enumerate(w):
            for j in range(2):
                layers.append(_block(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fns: dict[str, Callable[[], Any]], dev: torch.device, steps: int) -> dict[str, float]:
    """Interleaved median milliseconds of each case (CUDA events on a GPU)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (cuDNN autotuning, allocator)
        fn()
    for _ in range(steps):
        for name, fn in fns.items():
            _sync(dev)
            if dev.type == "cuda":
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(dev)
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _peak(fn: Callable[[], Any], dev: torch.device) -> int | None:
    if dev.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return int(torch.cuda.max_memory_allocated(dev))


class _NoSync:
    """Raise on any host-device synchronisation inside the block (CUDA only)."""

    def __init__(self, dev: torch.device) -> None:
        self.on = dev.type == "cuda"

    def __enter__(self) -> None:
        if self.on:
            torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc: object) -> None:
        if self.on:
            torch.cuda.set_sync_debug_mode("default")


def check_policies(dev: torch.device, size: dict[str, int], steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    c, n = size["classes"], size["batch"]
    model = ResNet18(c, size["width"]).to(dev)
    x = torch.randn(n, 3, size["image"], size["image"], device=dev)
    y = torch.randint(-1, 2, (n, c), device=dev).float()  # float multi-hot with -1 unknown
    w = torch.linspace(0.5, 2.0, c, device=dev)

    def chain() -> lg.Policy:
        return lg.chain(
            lg.mask_unknown(), lg.class_weights(w), lg.eqlv2(num_classes=c), lg.clip_per_class(1e6)
        )

    # Correctness: the first step (EQLv2 weighs 1, the clip is inactive) is the reweighted BCE.
    model.zero_grad()
    F.binary_cross_entropy_with_logits(
        chain()(model(x), y), y.clamp(min=0), reduction="sum"
    ).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = F.binary_cross_entropy_with_logits(model(x), y.clamp(min=0), reduction="none")
    (ref * (y >= 0) * w).sum().backward()
    err = max(
        float((a - p.grad).abs().max() / (p.grad.abs().max() + 1e-12))
        for a, p in zip(got, model.parameters(), strict=True)
    )

    policy = chain().to(dev)
    targets = lg.Targets.coerce(y, like=model(x))

    def plain() -> None:
        model.zero_grad()
        F.binary_cross_entropy_with_logits(model(x), y.clamp(min=0)).backward()

    def with_chain() -> None:
        model.zero_grad()
        F.binary_cross_entropy_with_logits(policy(model(x), targets), y.clamp(min=0)).backward()

    with_chain()
    with _NoSync(dev):
        with_chain()  # raises on any host sync in forward or backward

    amp_ok = None
    if dev.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        amp_policy = chain().to(dev)
        amp_policy.attach_grad_scaler(scaler)
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                out = amp_policy(model(x), targets)
                loss = F.binary_cross_entropy_with_logits(out.float(), y.clamp(min=0))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        amp_ok = all(bool(torch.isfinite(p).all()) for p in model.parameters())

    ms = _timed({"plain": plain, "chain": with_chain}, dev, steps)
    return {
        "max_rel_grad_error": err,
        "no_host_sync": True,
        "amp_finite": amp_ok,
        "plain_ms": ms["plain"],
        "chain_ms": ms["chain"],
        "ratio": ms["chain"] / ms["plain"],
        "peak_bytes": {"plain": _peak(plain, dev), "chain": _peak(with_chain, dev)},
    }


def check_rows(dev: torch.device, size: dict[str, int], steps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    c, width = size["head_classes"], size["head_width"]
    for state in ("zero", "warm"):
        torch.manual_seed(1)
        head = nn.Linear(width, c).to(dev)
        feats = torch.randn(size["batch"], width, device=dev)
        y = torch.randint(0, c // 2, (size["batch"],), device=dev) * 2 + 1  # odd classes only
        frozen = torch.arange(0, c, 2)
        bare = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.05, foreach=True)
        if state == "warm":
            bare.zero_grad()
            F.cross_entropy(head(feats), torch.arange(size["batch"], device=dev) % c).backward()
            bare.step()
        rules = lg.RowRules(
            bare, rows=head, frozen=frozen, lr_scale=torch.rand(c) + 0.5, skip_absent=True
        )
        bare.zero_grad()
        F.cross_entropy(head(feats), y).backward()
        before = (
            head.weight.detach().clone(),
            bare.state[head.weight]["exp_avg"].clone() if head.weight in bare.state else None,
        )
        targets = lg.Targets.coerce(y, like=head(feats))
        with _NoSync(dev):
            rules.step(targets=targets)
        still = bool(torch.equal(head.weight[frozen], before[0][frozen]))
        moment = bare.state[head.weight]["exp_avg"]
        still_state = bool(
            (moment[frozen] == (before[1][frozen] if before[1] is not None else 0)).all()
        )

        # Timed within this iteration only, so binding the loop's objects is what is meant.
        ms = _timed(
            {"bare": bare.step, "rows": lambda r=rules, t=targets: r.step(targets=t)}, dev, steps
        )
        out[state] = {
            "frozen_rows_bitwise": still,
            "frozen_state_bitwise": still_state,
            "no_host_sync": True,
            "bare_ms": ms["bare"],
            "rows_ms": ms["rows"],
            "ratio": ms["rows"] / ms["bare"],
        }
    return out


def check_engines(dev: torch.device, size: dict[str, int], steps: int) -> dict[str, Any]:
    torch.manual_seed(2)
    c = size["classes"]
    k = min(16, c)
    model = ResNet18(c, size["width"]).to(dev).eval()  # eval: BatchNorm is per sample
    x = torch.randn(size["batch"] // 4, 3, size["image"], size["image"], device=dev)
    y = torch.randint(0, 2, (x.shape[0], c), device=dev)
    groups = torch.arange(c) % k
    shared = list(model.trunk.parameters())
    out: dict[str, Any] = {}

    def losses() -> tuple[Tensor, Tensor]:
        feats = model.trunk(x)
        return lg.per_label_losses(model.head(feats), y, loss="bce", groups=groups), feats

    # The exact engine against J^T w from per-loss autograd rows.
    upgrad = lg.aggregators.UPGrad()
    model.zero_grad()
    ls, _ = losses()
    res = lg.aggregate_backward(ls, shared=shared, aggregator=upgrad, engine="exact")
    got = torch.cat([p.grad.flatten() for p in shared])
    ls, _ = losses()
    rows = torch.stack(
        [
            torch.cat([g.flatten() for g in torch.autograd.grad(ls[i], shared, retain_graph=True)])
            for i in range(k)
        ]
    )
    ref = rows.T @ res.weights
    out["exact_rel_error"] = float((got - ref).norm() / ref.norm().clamp_min(1e-30))

    def plain() -> None:
        model.zero_grad()
        losses()[0].sum().backward()

    def engine(name: str) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad()
            ls, feats = losses()
            lg.aggregate_backward(ls, shared=shared, aggregator=upgrad, engine=name, features=feats)

        return run

    cases: dict[str, Callable[[], None]] = {
        "plain": plain,
        "representation": engine("representation"),
        "exact": engine("exact"),
    }
    try:
        from torchjd.aggregation import UPGrad as JDUPGrad  # type: ignore[import-not-found]
        from torchjd.autojac import backward, jac_to_grad  # type: ignore[import-not-found]

        jd = JDUPGrad()

        def torchjd_exact() -> None:  # TorchJD 0.18: Jacobian of the shared parameters, UPGrad
            model.zero_grad()
            backward(list(losses()[0].unbind()), inputs=shared)
            jac_to_grad(shared, jd)

        cases["torchjd"] = torchjd_exact
    except Exception as err:  # not installed on the device machine, or another API
        out["torchjd"] = f"not run: {type(err).__name__}: {err}"
    ms = _timed(cases, dev, max(3, steps // 4))
    out.update({f"{name}_ms": v for name, v in ms.items()})
    out.update({f"{name}_ratio": v / ms["plain"] for name, v in ms.items()})
    out["peak_bytes"] = {name: _peak(fn, dev) for name, fn in cases.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --quick for a smoke run", file=sys.stderr)
        return 2
    size = (
        {"classes": 12, "batch": 8, "image": 8, "width": 4, "head_classes": 20, "head_width": 8}
        if args.quick
        else {
            "classes": 100,
            "batch": 128,
            "image": 32,
            "width": 64,
            "head_classes": 1000,
            "head_width": 2048,
        }
    )
    steps = 3 if args.quick else 30
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "labelgrad": lg.__version__,
        "smoke_run": args.quick,
        "size": size,
        "policies": check_policies(dev, size, steps),
        "rows": check_rows(dev, size, steps),
        "engines": check_engines(dev, size, steps),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    ok = (
        report["policies"]["max_rel_grad_error"] < 1e-3
        and all(
            r["frozen_rows_bitwise"] and r["frozen_state_bitwise"] for r in report["rows"].values()
        )
        and report["engines"]["exact_rel_error"] < 1e-3
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
