"""The long-tail experiment of the outcomes benchmark: trained to a plateau, tuned on validation.

Protocol (the same for every method):

- Data: Fashion-MNIST-LT (CIFAR-LT counts, n_max images for class 0) with a *balanced validation
  split carved from the official training images the long-tailed cut left out* (the
  ImageNet-LT protocol; ``val_per_class`` per class), and the official balanced test set, read
  once per chosen run. Without Fashion-MNIST: digits-LT, whose validation split is a fifth of
  each training class (none for classes under 5 images).
- Plateau: after every epoch the validation balanced accuracy is measured; training stops when
  it has not improved for ``patience`` epochs (or at ``max_epochs``), and the weights of the
  best validation epoch are kept. The same rule ends stage 2 of weight balancing.
- Tuning: one coordinate search for every method, scored on seed 0's validation split: the 3
  weight decays at the middle value of the method's own knob, then the knob's 2 other values at
  the best weight decay (5 configurations; 3 for ``plain_ce``, which has no knob). The best
  configuration is then trained with every seed. The test set is never read for a choice.

Methods (knob): ``plain_ce`` (none), ``logit_adjusted`` (the literature's reference, the
logit-adjusted loss; tau), ``tau_norm`` (post-hoc tau-normalisation of the plain run's head,
:func:`labelgrad.rows.tau_normalize`; its power), ``weight_balancing`` (stage 1 = the plain run,
stage 2 = the head retrained on the frozen trunk's features with class-balanced cross-entropy,
per-row weight decay and MaxNorm through :class:`labelgrad.RowRules`; the MaxNorm radius) and
``weight_balancing+logit_adjust`` (the same stage 2 with the ``lg.logit_adjust`` gradient
instead of class weights, tau the reference's choice; the radius). ``logit_adjust+row_rules``
(tail rows stepping faster; the power of the row step scale) can be tuned the same way but is
not in :data:`LT_PROTOCOL_METHODS`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.app import datasets
from labelgrad.app.bench.outcomes_setup import Sizes, SmallCNN
from labelgrad.app.datafiles import read_idx
from labelgrad.app.datasets import MissingSourceError, digits_lt, long_tail_counts
from labelgrad.app.metrics import per_class_recall, shot_group_accuracy
from labelgrad.app.recipes import long_tail_recipe, weight_balancing_stage2
from labelgrad.app.training import epoch_batches

__all__ = ["LT_PROTOCOL_METHODS", "LTData", "LongTailRun", "lt_data", "run_long_tail"]

LT_PROTOCOL_METHODS = (
    "plain_ce",
    "logit_adjusted",
    "tau_norm",
    "weight_balancing",
    "weight_balancing+logit_adjust",
)
"""The long-tail methods of the plateau protocol, in table order."""

KNOB = {
    "plain_ce": "",
    "logit_adjusted": "tau",
    "logit_adjust+row_rules": "power",
    "tau_norm": "tau_norm",
    "weight_balancing": "max_norm",
    "weight_balancing+logit_adjust": "max_norm",
}
"""The name of each method's own knob (beside the weight decay)."""


@dataclass(frozen=True)
class LTData:
    """One seed's long-tailed split: images (N, 1, side, side), class indices, counts."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    source: str
    class_names: tuple[str, ...]

    @property
    def counts(self) -> Tensor:
        """Training images per class."""
        return torch.bincount(self.y_train, minlength=len(self.class_names))


def _images(x: np.ndarray | Tensor, side: int) -> Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return t.reshape(len(t), 1, side, side)


def lt_data(imbalance: float, seed: int, sizes: Sizes) -> LTData:
    """Fashion-MNIST-LT with a balanced validation split where installed, else digits-LT.

    The training cut is :func:`labelgrad.app.datasets.fashion_mnist_lt`'s (the same random
    draw); validation takes ``sizes.lt_val_per_class`` images per class from the official
    training images after the first ``n_max`` of each class's permutation, so it never overlaps
    the training cut.
    """
    if sizes.fashion:
        try:
            return _fashion(imbalance, seed, sizes)
        except MissingSourceError:
            pass
    ds = digits_lt(imbalance, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    val = torch.zeros(len(ds.y_train), dtype=torch.bool)
    for c in range(ds.num_classes):
        idx = torch.nonzero(ds.y_train == c).flatten()
        take = len(idx) // 5 if len(idx) >= 5 else 0
        val[idx[torch.randperm(len(idx), generator=gen)[:take]]] = True
    return LTData(
        _images(ds.x_train[~val], 8),
        ds.y_train[~val],
        _images(ds.x_train[val], 8),
        ds.y_train[val],
        _images(ds.x_test, 8),
        ds.y_test,
        "digits-LT",
        ds.class_names,
    )


def _fashion(imbalance: float, seed: int, sizes: Sizes) -> LTData:
    names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    folder = datasets.FASHION_MNIST_DIR  # read at call time (tests point it elsewhere)
    if any(not (folder / n).is_file() for n in names):
        raise MissingSourceError(f"Fashion-MNIST not found in {folder}")
    xtr, ytr, xte, yte = (read_idx(folder / n) for n in names)
    ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    # The same draws, in the same order, as fashion_mnist_lt: the training cut is identical.
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(ytr == c)) for c in range(10)]
    top = min(len(i) for i in by_class)
    n_max = min(sizes.lt_n_max, top)
    counts = long_tail_counts(n_max, 10, imbalance)
    keep = rng.permutation(np.concatenate([i[:n] for i, n in zip(by_class, counts)]))
    if sizes.lt_test_per_class is not None:
        test_keep = np.concatenate(
            [
                rng.permutation(np.flatnonzero(yte == c))[: sizes.lt_test_per_class]
                for c in range(10)
            ]
        )
        xte, yte = xte[test_keep], yte[test_keep]
    val = np.concatenate([i[n_max : n_max + sizes.lt_val_per_class] for i in by_class])
    return LTData(
        _images(xtr[keep] / 255.0, 28),
        torch.from_numpy(ytr[keep]),
        _images(xtr[val] / 255.0, 28),
        torch.from_numpy(ytr[val]),
        _images(xte / 255.0, 28),
        torch.from_numpy(yte),
        "Fashion-MNIST-LT",
        datasets.FASHION_MNIST_CLASSES,
    )


# --- training to a plateau --------------------------------------------------------------------


@dataclass
class Fit:
    """The outcome of one training to a plateau: the validation score of the kept weights."""

    val: float
    best_epoch: int
    epochs: int


def _balanced(scores: Tensor, y: Tensor, c: int) -> float:
    return float(per_class_recall(scores.argmax(1), y, c).nanmean())


def _fit(
    module: nn.Module,
    step: Callable[[Tensor], None],
    n: int,
    batch: int,
    seed: int,
    validate: Callable[[], float],
    max_epochs: int,
    patience: int,
) -> Fit:
    """Train until the validation score has not improved for ``patience`` epochs; load the best.

    ``step(index_batch)`` trains on one batch; ``validate()`` scores ``module`` on validation.
    """
    best, best_epoch, best_state = -math.inf, 0, copy.deepcopy(module.state_dict())
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        module.train()
        for idx in epoch_batches(n, batch, seed=seed, epoch=epoch):
            step(idx)
        module.eval()
        score = validate()
        if score > best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(module.state_dict())
        elif epoch - best_epoch >= patience:
            break
    module.load_state_dict(best_state)
    module.eval()
    return Fit(best, best_epoch, epoch)


def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, dev: torch.device) -> Tensor:
    with torch.no_grad():
        return torch.cat([fn(xb.to(dev)).cpu() for xb in x.split(1000)])


def _train_full(
    data: LTData,
    method: str,
    wd: float,
    knob: float | None,
    tau: float,
    seed: int,
    sizes: Sizes,
    dev: torch.device,
) -> tuple[SmallCNN, Fit]:
    """Stage 1 (or the only stage): a SmallCNN trained with ``method`` to its plateau."""
    torch.manual_seed(seed)
    c = len(data.class_names)
    model = SmallCNN(data.x_train.shape[-1], c).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=sizes.lt_lr, weight_decay=wd)
    extra: dict[str, Any] = {}
    if method == "logit_adjusted":
        extra["tau"] = knob
    elif method == "logit_adjust+row_rules":
        extra = {"tau": tau, "power": knob}
    n = len(data.y_train)
    steps = sizes.lt_max_epochs * math.ceil(n / sizes.lt_batch)
    recipe = long_tail_recipe(method, model.head, opt, data.counts, total_steps=steps, **extra)
    step = recipe.step(model)
    x, y = data.x_train.to(dev), data.y_train.to(dev)

    def validate() -> float:
        return _balanced(_batched(model, data.x_val, dev), data.y_val, c)

    fit = _fit(
        model,
        lambda idx: step(x[idx], y[idx]),
        n,
        sizes.lt_batch,
        seed,
        validate,
        sizes.lt_max_epochs,
        sizes.lt_patience,
    )
    return model, fit


def _stage2(
    model: SmallCNN,
    data: LTData,
    loss: str,
    wd: float,
    factor: float,
    tau: float,
    seed: int,
    sizes: Sizes,
    dev: torch.device,
) -> tuple[nn.Linear, Fit]:
    """Weight balancing's stage 2 on the frozen trunk's features: a retrained copy of the head."""
    c = len(data.class_names)
    feats = _batched(model.trunk, data.x_train, dev).to(dev)
    val_feats = _batched(model.trunk, data.x_val, dev).to(dev)
    head = copy.deepcopy(model.head)
    radius = factor * float(head.weight.detach().norm(dim=1).mean())
    recipe = weight_balancing_stage2(
        head, data.counts, lr=sizes.lt_lr, weight_decay=wd, max_norm=radius, loss=loss, tau=tau
    )
    step = recipe.step(head)
    y = data.y_train.to(dev)

    def validate() -> float:
        with torch.no_grad():
            return _balanced(head(val_feats).cpu(), data.y_val, c)

    fit = _fit(
        head,
        lambda idx: step(feats[idx], y[idx]),
        len(y),
        sizes.lt_batch,
        seed + 7919,
        validate,
        sizes.lt_max_epochs,
        sizes.lt_patience,
    )
    return head, fit


# --- the experiment ---------------------------------------------------------------------------


@dataclass
class LongTailRun:
    """One method at one imbalance factor: the chosen configuration and each seed's results."""

    method: str
    config: dict[str, float]
    grid_val: list[tuple[dict[str, float], float]]
    metrics: list[dict[str, float]]
    recalls: list[Tensor]


class _Runner:
    """Trains (and caches) the full runs of one imbalance factor; scores configurations."""

    def __init__(
        self, imbalance: float, sizes: Sizes, dev: torch.device, tick: Callable[[str], None]
    ) -> None:
        self.imbalance, self.sizes, self.dev, self.tick = imbalance, sizes, dev, tick
        self.data: dict[int, LTData] = {}
        self.full: dict[tuple[str, float, float | None, float, int], tuple[SmallCNN, Fit]] = {}
        self.tau = 1.0  # the reference's chosen tau, set once logit_adjusted is tuned

    def seed_data(self, seed: int) -> LTData:
        if seed not in self.data:
            self.data[seed] = lt_data(self.imbalance, seed, self.sizes)
        return self.data[seed]

    def trained(
        self, method: str, wd: float, knob: float | None, seed: int
    ) -> tuple[SmallCNN, Fit]:
        tau = self.tau if method == "logit_adjust+row_rules" else 1.0
        key = (method, wd, knob, tau, seed)
        if key not in self.full:
            self.tick(f"IF={self.imbalance:g} {method} wd={wd:g} {KNOB[method]}={knob} seed={seed}")
            data = self.seed_data(seed)
            self.full[key] = _train_full(data, method, wd, knob, tau, seed, self.sizes, self.dev)
        return self.full[key]

    def model(
        self, method: str, wd: float, knob: float | None, seed: int
    ) -> tuple[Callable[[Tensor], Tensor], Fit, Fit | None]:
        """``method``'s classifier (a function of images), its stage-1 fit, its stage-2 fit."""
        if method in ("plain_ce", "logit_adjusted", "logit_adjust+row_rules"):
            net, fit = self.trained(method, wd, knob, seed)
            return net, fit, None
        net, fit = self.trained("plain_ce", wd, None, seed)
        assert knob is not None
        if method == "tau_norm":
            head = lg.rows.tau_normalize(net.head, knob)
            return (lambda x: head(net.trunk(x))), fit, None
        loss = "class_balanced" if method == "weight_balancing" else "logit_adjust"
        data = self.seed_data(seed)
        head2, fit2 = _stage2(net, data, loss, wd, knob, self.tau, seed, self.sizes, self.dev)
        return (lambda x: head2(net.trunk(x))), fit, fit2

    def val_score(self, method: str, wd: float, knob: float | None, seed: int) -> float:
        fn, _, _ = self.model(method, wd, knob, seed)
        data = self.seed_data(seed)
        return _balanced(_batched(fn, data.x_val, self.dev), data.y_val, len(data.class_names))


def _knobs(method: str, sizes: Sizes) -> tuple[float, ...]:
    return {
        "plain_ce": (),
        "logit_adjusted": sizes.lt_taus,
        "logit_adjust+row_rules": sizes.lt_powers,
        "tau_norm": sizes.lt_tau_norms,
        "weight_balancing": sizes.lt_radii,
        "weight_balancing+logit_adjust": sizes.lt_radii,
    }[method]


def _tune(
    method: str, runner: _Runner, sizes: Sizes
) -> tuple[tuple[float, float | None], list[tuple[tuple[float, float | None], float]]]:
    """Coordinate search on seed 0's validation split, the same for every method: each weight
    decay with the middle value of the method's knob, then the knob's other values at the best
    weight decay (3 + 2 configurations; 3 for a method without a knob). Ties: the first."""
    knobs = _knobs(method, sizes)
    mid = knobs[len(knobs) // 2] if knobs else None
    scored = [((wd, mid), runner.val_score(method, wd, mid, 0)) for wd in sizes.lt_weight_decays]
    best = max(scored, key=lambda s: s[1])[0]
    for k in knobs:
        if k != mid:
            scored.append(((best[0], k), runner.val_score(method, best[0], k, 0)))
    return max(scored, key=lambda s: s[1])[0], scored


def run_long_tail(
    imbalance: float, sizes: Sizes, dev: torch.device, tick: Callable[[str], None]
) -> tuple[list[LongTailRun], LTData]:
    """Every method of :data:`LT_PROTOCOL_METHODS` at one imbalance factor (see the module).

    ``tick(description)`` is called before every full training (for a progress bar).
    """
    runner = _Runner(imbalance, sizes, dev, tick)
    out = []
    for method in LT_PROTOCOL_METHODS:
        (wd, knob), scored = _tune(method, runner, sizes)
        if method == "logit_adjusted":
            assert knob is not None
            runner.tau = knob
        run = LongTailRun(method, _config(method, wd, knob, runner.tau), [], [], [])
        run.grid_val = [(_config(method, w, k, runner.tau), v) for (w, k), v in scored]
        for seed in range(sizes.lt_seeds):
            fn, fit, fit2 = runner.model(method, wd, knob, seed)
            data = runner.seed_data(seed)
            c = len(data.class_names)
            pred = _batched(fn, data.x_test, dev).argmax(1)
            recall = per_class_recall(pred, data.y_test, c)
            metrics = {"balanced_acc": float(recall.nanmean())}
            groups = shot_group_accuracy(recall, data.counts)
            metrics.update({f"{k}_acc": v for k, v in groups.items()})
            last = fit2 if fit2 is not None else fit
            metrics.update(
                {
                    "val_balanced_acc": last.val,
                    "best_epoch": float(fit.best_epoch),
                    "epochs": float(fit.epochs),
                    "at_cap": float(
                        fit.epochs >= sizes.lt_max_epochs
                        and fit.best_epoch > fit.epochs - sizes.lt_patience
                    ),
                }
            )
            if fit2 is not None:
                metrics["stage2_best_epoch"] = float(fit2.best_epoch)
            run.metrics.append(metrics)
            run.recalls.append(recall)
        out.append(run)
    return out, runner.seed_data(0)


def _config(method: str, wd: float, knob: float | None, tau: float) -> dict[str, float]:
    cfg = {"weight_decay": wd}
    if knob is not None:
        cfg[KNOB[method]] = knob
    if method in ("logit_adjust+row_rules", "weight_balancing+logit_adjust"):
        cfg["tau"] = tau
    return cfg
