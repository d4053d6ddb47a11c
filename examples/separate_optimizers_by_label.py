"""Separate optimizers chosen by label, done right with ``lg.route``.

The third technique of the well-known "customize gradient updates based on labels" recipe gives
each group of labels its own optimizer, e.g. plain SGD for frequent classes and Adam with a larger
step for rare ones. Calling every optimizer on every batch defeats the purpose: on batches without
a rare label, Adam's moments keep moving the rare head (and the rare head still gets the negative
gradient of softmax). ``lg.route`` steps an optimizer only when one of its classes occurs in the
batch; the others keep parameters and state bitwise unchanged. The shared trunk has an optimizer
of its own that steps on every batch (``always=``): the usual shape of this recipe, a trunk
optimizer plus one optimizer per label-group head over disjoint parameters.

Data: sklearn's digits cut long-tailed (the CIFAR-LT protocol, imbalance factor 20); classes
0-6 are "frequent", 7-9 "rare".

Run: PYTHONPATH=src python examples/separate_optimizers_by_label.py   (a few seconds)
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

import labelgrad as lg

FREQUENT, RARE = list(range(7)), [7, 8, 9]


def long_tailed_digits(imbalance: float = 20.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    n = int(0.7 * len(y))
    xt, yt, x, y = x[n:], y[n:], x[:n], y[:n]
    n_max = int((y == 0).sum())
    keep = torch.cat(
        [
            (y == c).nonzero().flatten()[: max(1, int(n_max * (1 / imbalance) ** (c / 9)))]
            for c in range(10)
        ]
    )
    return x[keep], y[keep], xt, yt


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
        self.frequent = nn.Linear(64, len(FREQUENT))
        self.rare = nn.Linear(64, len(RARE))

    def forward(self, x: Tensor) -> Tensor:
        h = self.trunk(x)
        return torch.cat([self.frequent(h), self.rare(h)], dim=1)


def run(use_route: bool, epochs: int) -> dict[str, float]:
    x, y, xt, yt = long_tailed_digits()
    model = TwoHeads()
    trunk_opt = torch.optim.SGD(model.trunk.parameters(), lr=0.2, momentum=0.9)
    frequent_opt = torch.optim.SGD(model.frequent.parameters(), lr=0.2, momentum=0.9)
    rare_opt = torch.optim.Adam(model.rare.parameters(), lr=3e-3)
    router = lg.route(
        {"frequent": (frequent_opt, FREQUENT), "rare": (rare_opt, RARE)},
        always=[trunk_opt],  # the shared trunk learns from every batch
    )
    g = torch.Generator().manual_seed(1)
    drift_steps = 0  # steps on batches without a rare label in which the rare head moved
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(32):
            xb, yb = x[idx], y[idx]
            rare_before = model.rare.weight.detach().clone()
            router.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            if use_route:
                router.step(targets=yb)
            else:  # the naive version: every optimizer, every batch
                trunk_opt.step()
                frequent_opt.step()
                rare_opt.step()
            no_rare = not bool(torch.isin(yb, torch.tensor(RARE)).any())
            if no_rare and not torch.equal(model.rare.weight, rare_before):
                drift_steps += 1
    with torch.no_grad():
        pred = model(xt).argmax(1)
    rare_mask = torch.isin(yt, torch.tensor(RARE))
    return {
        "drift_steps": float(drift_steps),
        "acc_frequent": float((pred[~rare_mask] == yt[~rare_mask]).float().mean()),
        "acc_rare": float((pred[rare_mask] == yt[rare_mask]).float().mean()),
    }


def _main(epochs: int = 8) -> dict[str, dict[str, float]]:
    """Train with the naive loop and with ``lg.route``; print and return their figures."""
    results = {}
    for name, use_route in (("every optimizer", False), ("lg.route", True)):
        r = run(use_route, epochs)
        results[name] = r
        print(
            f"{name:>16}: rare head moved on {int(r['drift_steps'])} batches without a rare "
            f"label; accuracy frequent {r['acc_frequent']:.2f}, rare {r['acc_rare']:.2f}"
        )
    return results


def main(epochs: int | None = None) -> Any:
    """Run the example on one thread (tiny model: threads only add overhead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _main() if epochs is None else _main(epochs)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
