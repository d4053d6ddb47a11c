"""Class-incremental learning on real digits: learn 0-4, then add 5-9 with the old rows frozen.

The usual way to "freeze" the head rows of old classes is to zero their gradient after backward.
Under AdamW that does not freeze them: decoupled weight decay shrinks them every step and Adam's
moments from the first phase keep pushing them. ``lg.RowRules(frozen=...)`` acts on the update, so
the old rows stay bitwise where they were.

Run: PYTHONPATH=src python examples/class_incremental.py   (about 10 s on a laptop CPU)
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

import labelgrad as lg

OLD, NEW = list(range(5)), list(range(5, 10))


def data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    n = int(0.8 * len(y))
    return x[:n], y[:n], x[n:], y[n:]


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train(
    model: nn.Sequential,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    epochs: int,
    mask_rows: list[int] | None = None,
) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            if mask_rows is not None:  # the common advice: zero the gradient of frozen rows
                head = model[2]
                assert isinstance(head, nn.Linear)
                assert head.weight.grad is not None
                head.weight.grad[mask_rows] = 0
                assert head.bias is not None
                assert head.bias.grad is not None
                head.bias.grad[mask_rows] = 0
            if isinstance(opt, lg.RowRules):
                opt.step(targets=y[idx])
            else:
                opt.step()


def accuracy(model: nn.Sequential, x: Tensor, y: Tensor, classes: list[int]) -> float:
    keep = torch.isin(y, torch.tensor(classes))
    with torch.no_grad():
        return float((model(x[keep]).argmax(1) == y[keep]).float().mean())


def _main(epochs: int = 6) -> dict[str, float]:
    """Run both variants; return how far the old rows moved in phase 2 under each."""
    x, y, xt, yt = data()
    old_tr, new_tr = torch.isin(y, torch.tensor(OLD)), torch.isin(y, torch.tensor(NEW))
    results: dict[str, float] = {}
    for variant in ("gradient masking", "labelgrad RowRules"):
        model = make_model()
        phase1 = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
        train(model, phase1, x[old_tr], y[old_tr], epochs)
        head = model[2]
        assert isinstance(head, nn.Linear)
        rows_before = torch.cat([head.weight[OLD], head.bias[OLD, None]], 1).detach().clone()
        # Phase 2 continues with the same optimizer (its moments carry over, as in practice).
        if variant == "labelgrad RowRules":
            rules = lg.RowRules(phase1, rows=head, frozen=OLD)
            train(model, rules, x[new_tr], y[new_tr], epochs)
        else:
            train(model, phase1, x[new_tr], y[new_tr], epochs, mask_rows=OLD)
        rows_after = torch.cat([head.weight[OLD], head.bias[OLD, None]], 1).detach()
        moved = float((rows_after - rows_before).abs().max())
        results[variant] = moved
        print(
            f"{variant:>20}: old rows moved by max |delta| = {moved:.3g}; "
            f"accuracy on new classes {accuracy(model, xt, yt, NEW):.2f}"
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
