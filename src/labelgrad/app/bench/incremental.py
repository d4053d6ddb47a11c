"""The class-incremental experiment of the outcomes benchmark: forgetting with and without A-GEM.

Digits (scikit-learn's bundled 8x8 images, balanced) split into 5 tasks of 2 classes learnt one
after the other by one MLP with a shared 10-way head (class-incremental: no task identity at test
time). A small replay memory keeps a few training images of every class already learnt. Methods,
one recipe (SGD, epochs per task, batch size, memory) for all:

- ``fine_tuning``: plain cross-entropy on the current task (the memory is not used);
- ``row_rules_frozen``: the same, with the head rows of the old classes frozen (``lg.RowRules``);
- ``agem``: ``lg.project_replay`` of the batch gradient against the memory's loss (A-GEM);
- ``agem+row_rules_frozen``: both;
- ``labels_trick``: the labels trick (Zeno et al. 2018) in the form of ER-ACE's asymmetric
  cross-entropy (Caccia et al. 2022; SS-IL's separated softmax, Ahn et al. 2021, is the same
  idea): the current task's batch competes only among the classes present in it (the
  :class:`LabelsTrick` policy at its logits), and the memory, replayed with every step, trains
  all the classes seen so far with plain cross-entropy;
- ``agem+labels_trick``: A-GEM whose batch loss is the labels-trick one.

Why a surrogate-gradient policy and not ``lg.mask``: zeroing the absent classes' entries of the
full-softmax gradient leaves p_c - y_c on the present ones, whose sum is not zero, so every step
raises the present logits against frozen absent ones; with the replay loss doing the same for
the old classes, the logits diverge (measured: |logits| ~ 1e14 after 5 tasks). The published
trick is a softmax over the present classes only, whose gradient sums to zero.

Metrics after the last task: average accuracy over the 5 tasks' test sets, and forgetting, the
mean over the first 4 tasks of (best accuracy on the task at any earlier point - final accuracy).
Also the learning accuracy (Riemer et al. 2019): the mean over the tasks of the accuracy on a task
right after training it, which shows a method that does not learn the new task at first (whose
forgetting can then be negative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import labelgrad as lg
from labelgrad.app.datasets import digits_lt
from labelgrad.app.training import MLP, epoch_batches

__all__ = ["INCREMENTAL_METHODS", "TASKS", "LabelsTrick", "forgetting", "incremental_run"]

INCREMENTAL_METHODS = (
    "fine_tuning",
    "row_rules_frozen",
    "agem",
    "agem+row_rules_frozen",
    "labels_trick",
    "agem+labels_trick",
)
TASKS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
LR = 0.1
BATCH = 32


def _task_mask(y: Tensor, classes: tuple[int, ...]) -> Tensor:
    return torch.isin(y, torch.tensor(classes))


class LabelsTrick(lg.Policy):
    """Softmax cross-entropy over the classes present in the batch only (the labels trick).

    Replaces the gradient of ``F.cross_entropy`` (class-index targets) by that of cross-entropy
    on the logits with every class absent from the batch's targets removed from the softmax
    (ER-ACE's asymmetric loss on the incoming data, Caccia et al. 2022), at the same per-sample
    scale (read from the incoming gradient, as :func:`labelgrad.logit_adjust` does): absent
    classes get exactly zero gradient, and the present ones softmax(z | present) - y.

    Example:
        >>> import torch.nn.functional as F
        >>> z = torch.zeros(2, 4, requires_grad=True)
        >>> y = torch.tensor([0, 1])
        >>> F.cross_entropy(LabelsTrick()(z, y), y).backward()
        >>> z.grad.tolist()  # softmax over classes {0, 1} only, / N
        [[-0.25, 0.25, 0.0, 0.0], [0.25, -0.25, 0.0, 0.0]]
    """

    reads_logits = True

    def transform(self, grad: Tensor, ctx: lg.GradContext) -> Tensor:
        t = ctx.require_targets(self)
        z, q = ctx.require_logits(self).to(grad.dtype), t.values.to(grad.dtype)
        # CE's gradient is s (softmax(z) - q) per row: read s where the target is 0.
        free = q == 0
        num = torch.where(free, grad, 0.0).sum(-1, keepdim=True)
        den = torch.where(free, torch.softmax(z, -1), 0.0).sum(-1, keepdim=True)
        scale = torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 0.0)
        present = t.positive.flatten(0, -2).any(0)  # (C,): no host sync
        out = scale * (torch.softmax(z.masked_fill(~present, float("-inf")), -1) - q)
        ok = torch.isfinite(grad).all(-1, keepdim=True)  # non-finite gradients pass through
        return torch.where(ok, out, grad)


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


def incremental_run(
    method: str, seed: int, *, epochs: int, memory_per_class: int, device: torch.device
) -> dict[str, float]:
    """Train ``method`` through the 5 tasks; return its three metrics (see the module).

    Example:
        >>> out = incremental_run("agem", 0, epochs=1, memory_per_class=2,
        ...                       device=torch.device("cpu"))
        >>> sorted(out)
        ['average_acc', 'forgetting', 'learning_acc']
    """
    if method not in INCREMENTAL_METHODS:
        raise ValueError(f"method must be one of {', '.join(INCREMENTAL_METHODS)}, got {method!r}")
    ds = digits_lt(1.0, seed=seed)
    torch.manual_seed(seed)
    model = MLP(ds.num_features, [64], ds.num_classes).to(device)
    agem, freeze = method.startswith("agem"), method.endswith("row_rules_frozen")
    gate = LabelsTrick() if method.endswith("labels_trick") else None
    mem_x, mem_y = ds.x_train[:0], ds.y_train[:0]
    acc = torch.zeros(len(TASKS), len(TASKS), dtype=torch.float64)  # [after task, on task]
    for t, classes in enumerate(TASKS):
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        old = [c for done in TASKS[:t] for c in done]
        if freeze and old:
            opt = lg.RowRules(opt, rows=model.head, frozen=old)
        keep = _task_mask(ds.y_train, classes)
        x, y = ds.x_train[keep].to(device), ds.y_train[keep].to(device)
        mx, my = mem_x.to(device), mem_y.to(device)
        for epoch in range(epochs):
            for idx in epoch_batches(len(x), BATCH, seed=seed, epoch=100 * t + epoch):
                opt.zero_grad(set_to_none=True)
                logits = model(x[idx])
                if gate is not None:
                    logits = gate(logits, y[idx])
                loss = F.cross_entropy(logits, y[idx])
                if agem and len(mx):
                    lg.project_replay(loss, F.cross_entropy(model(mx), my), model)
                elif gate is not None and len(mx):  # ER-ACE: plain CE on the replay
                    (loss + F.cross_entropy(model(mx), my)).backward()
                else:
                    loss.backward()
                opt.step()
        # The memory: the first images of each new class (the data cut is already shuffled).
        for c in classes:
            pick = ds.y_train == c
            mem_x = torch.cat([mem_x, ds.x_train[pick][:memory_per_class]])
            mem_y = torch.cat([mem_y, ds.y_train[pick][:memory_per_class]])
        with torch.no_grad():
            pred = model(ds.x_test.to(device)).argmax(1).cpu()
        for s in range(t + 1):
            on = _task_mask(ds.y_test, TASKS[s])
            acc[t, s] = (pred[on] == ds.y_test[on]).double().mean()
    return {
        "average_acc": float(acc[-1].mean()),
        "forgetting": float(forgetting(acc)),
        "learning_acc": float(acc.diagonal().mean()),
    }
