"""The class-incremental experiment of the outcomes benchmark, on the standard protocol.

Digits (scikit-learn's bundled 8x8 images, balanced) split into 5 tasks of 2 classes learnt one
after the other by one MLP with a shared 10-way head (class-incremental: no task identity at test
time). The replay memory is filled as experience replay fills it (Chaudhry et al. 2019; Mammoth's
``Buffer``): reservoir sampling over the stream of training images, the current task's images
included while the task trains, ``memory_per_class`` x 10 slots in all. One recipe (SGD, epochs
per task, batch size, memory) for every method:

- ``fine_tuning``: plain cross-entropy on the current task (the memory is not read);
- ``er``: experience replay: cross-entropy on the current batch plus cross-entropy on a batch
  drawn from the memory;
- ``er_ace``: ER with the labels trick on the current batch (ER-ACE, Caccia et al. 2022; the
  labels trick, Zeno et al. 2018): the incoming batch trains a softmax over the classes present
  in it only (the :func:`labelgrad.labels_trick` policy at its logits), the replayed batch plain
  cross-entropy over every class;
- ``agem``: A-GEM: the current batch's gradient projected against the replayed batch's
  (``lg.project_replay``).

Each with two labelgrad additions: ``+wa``, weight aligning (Zhao et al., CVPR 2020: after each
task the new classes' head rows are rescaled to the old rows' mean norm,
:func:`labelgrad.rows.align_weights`), and ``+frozen``, the
old classes' head rows frozen while a new task trains (``lg.RowRules(frozen=...)``). ``joint``
trains on every task at once for as many epochs (so as many optimizer steps as the sequence):
the ceiling.

Why a surrogate-gradient policy and not ``lg.mask``: zeroing the absent classes' entries of the
full-softmax gradient leaves p_c - y_c on the present ones, whose sum is not zero, so every step
raises the present logits against frozen absent ones; with the replay loss doing the same for
the old classes, the logits diverge. The published trick is a softmax over the present classes
only, whose gradient sums to zero.

Metrics after the last task: average accuracy over the 5 tasks' test sets, and forgetting, the
mean over the first 4 tasks of (best accuracy on the task at any earlier point - final accuracy,
Chaudhry et al. 2018). Also the learning accuracy (Riemer et al. 2019): the mean over the tasks of
the accuracy on a task right after training it, which shows a method that does not learn the new
task at first (whose forgetting can then be negative).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

import labelgrad as lg
from labelgrad.app.datasets import digits_lt
from labelgrad.app.training import MLP, epoch_batches

__all__ = ["INCREMENTAL_METHODS", "TASKS", "Reservoir", "forgetting", "incremental_run"]

_BASES = ("fine_tuning", "er", "er_ace", "agem")
INCREMENTAL_METHODS = (
    *(f"{b}{v}" for b in _BASES for v in ("", "+wa", "+frozen")),
    "joint",
)
"""Every base method alone, with weight aligning (``+wa``) and with frozen old rows
(``+frozen``); ``joint`` (all tasks at once) is the ceiling."""
TASKS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
LR = 0.1
BATCH = 32


def _task_mask(y: Tensor, classes: tuple[int, ...]) -> Tensor:
    return torch.isin(y, torch.tensor(classes, device=y.device))


class Reservoir:
    """A replay memory filled by reservoir sampling over the stream (experience replay's).

    Every image offered is the ``seen``-th of the stream; while the memory has free slots it is
    stored, afterwards it replaces a uniformly drawn slot with probability size / seen, so the
    memory is a uniform sample of everything seen so far (Vitter 1985; Chaudhry et al. 2019).

    Example:
        >>> mem = Reservoir(4, 3, seed=0)
        >>> mem.add(torch.ones(10, 3), torch.arange(10))
        >>> len(mem), mem.seen
        (4, 10)
    """

    def __init__(self, size: int, features: int, *, seed: int) -> None:
        self.size = size
        self.x = torch.zeros(size, features)
        self.y = torch.zeros(size, dtype=torch.long)
        self.seen = 0
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return min(self.seen, self.size)

    def add(self, x: Tensor, y: Tensor) -> None:
        """Offer a batch of images (in stream order)."""
        n = len(y)
        ranks = torch.arange(self.seen, self.seen + n)  # 0-based position in the stream
        draws = (torch.rand(n, generator=self._gen) * (ranks + 1)).long()
        slot = torch.where(ranks < self.size, ranks, draws)
        # A slot drawn twice in one batch goes to the later image, as the one-by-one algorithm
        # has it (an indexed write with repeated indices has no defined winner).
        order = torch.arange(n)
        last = torch.full((self.size + 1,), -1, dtype=torch.long)
        last = last.scatter_reduce(0, slot.clamp(max=self.size), order, reduce="amax")[:-1]
        won = last[last >= 0]
        self.x[slot[won]] = x[won].detach().cpu().to(self.x.dtype)
        self.y[slot[won]] = y[won].cpu()
        self.seen += n

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` stored images drawn without replacement (all of them when fewer are stored)."""
        idx = torch.randperm(len(self), generator=self._gen)[:n]
        return self.x[idx], self.y[idx]


def forgetting(acc: Tensor) -> Tensor:
    """Forgetting after the last task (Chaudhry et al. 2018), from an accuracy matrix.

    Args:
        acc: (T, T) accuracies, ``acc[t, s]`` on task s after training task t (T >= 2; entries
            with s > t are ignored).

    Returns:
        The mean over the old tasks s < T-1 of max_{t < T-1} acc[t, s] - acc[T-1, s].

    Example:
        >>> forgetting(torch.tensor([[0.9, 0.0], [0.5, 0.8]]))
        tensor(0.4000)
    """
    if acc.dim() != 2 or acc.shape[0] != acc.shape[1] or acc.shape[0] < 2:
        raise ValueError(f"acc must be a (T, T) matrix with T >= 2, got shape {tuple(acc.shape)}")
    last = acc.shape[0] - 1
    # Rows t < s (the task not learnt yet) are masked out of the max.
    seen = torch.ones(last, last, dtype=torch.bool).tril()
    best = acc[:last, :last].masked_fill(~seen, float("-inf")).max(0).values
    return (best - acc[last, :last]).mean()


def _task_accuracy(model: torch.nn.Module, x: Tensor, y: Tensor, tasks: int) -> Tensor:
    """Accuracy on each of the first ``tasks`` tasks' test images (no task identity)."""
    with torch.no_grad():
        pred = model(x).argmax(1)
    return torch.stack(
        [(pred[on] == y[on]).double().mean() for on in (_task_mask(y, c) for c in TASKS[:tasks])]
    ).cpu()


def incremental_run(
    method: str, seed: int, *, epochs: int, memory_per_class: int, device: torch.device
) -> dict[str, float]:
    """Train ``method`` through the 5 tasks; return its three metrics (see the module).

    ``joint`` returns its average accuracy only (forgetting and learning accuracy are NaN).

    Example:
        >>> out = incremental_run("er_ace+wa", 0, epochs=1, memory_per_class=2,
        ...                       device=torch.device("cpu"))
        >>> sorted(out)
        ['average_acc', 'forgetting', 'learning_acc']
    """
    if method not in INCREMENTAL_METHODS:
        raise ValueError(f"method must be one of {', '.join(INCREMENTAL_METHODS)}, got {method!r}")
    ds = digits_lt(1.0, seed=seed)
    torch.manual_seed(seed)
    model = MLP(ds.num_features, [64], ds.num_classes).to(device)
    xt, yt = ds.x_test.to(device), ds.y_test.to(device)
    if method == "joint":
        _train_joint(model, ds.x_train.to(device), ds.y_train.to(device), epochs, seed)
        final = _task_accuracy(model, xt, yt, len(TASKS))
        return {
            "average_acc": float(final.mean()),
            "forgetting": math.nan,
            "learning_acc": math.nan,
        }
    base, _, variant = method.partition("+")
    gate = lg.labels_trick() if base == "er_ace" else None
    memory = Reservoir(memory_per_class * ds.num_classes, ds.num_features, seed=seed)
    acc = torch.zeros(len(TASKS), len(TASKS), dtype=torch.float64)  # [after task, on task]
    for t, classes in enumerate(TASKS):
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        old = [c for done in TASKS[:t] for c in done]
        if variant == "frozen" and old:
            opt = lg.RowRules(opt, rows=model.head, frozen=old)
        keep = _task_mask(ds.y_train, classes)
        x, y = ds.x_train[keep].to(device), ds.y_train[keep].to(device)
        for epoch in range(epochs):
            for idx in epoch_batches(len(x), BATCH, seed=seed, epoch=100 * t + epoch):
                opt.zero_grad(set_to_none=True)
                logits = model(x[idx])
                if gate is not None:
                    logits = gate(logits, y[idx])
                loss = F.cross_entropy(logits, y[idx])
                if base != "fine_tuning" and len(memory):
                    mx, my = memory.sample(BATCH)
                    replay = F.cross_entropy(model(mx.to(device)), my.to(device))
                    if base == "agem":
                        lg.project_replay(loss, replay, model)
                    else:
                        (loss + replay).backward()
                else:
                    loss.backward()
                opt.step()
                memory.add(x[idx], y[idx])
        if variant == "wa" and old:
            lg.rows.align_weights(model.head, list(classes), old, inplace=True)
        acc[t, : t + 1] = _task_accuracy(model, xt, yt, t + 1)
    return {
        "average_acc": float(acc[-1].mean()),
        "forgetting": float(forgetting(acc)),
        "learning_acc": float(acc.diagonal().mean()),
    }


def _train_joint(model: torch.nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for epoch in range(epochs):
        for idx in epoch_batches(len(x), BATCH, seed=seed, epoch=epoch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
