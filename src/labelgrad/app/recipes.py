"""The training recipes of ``labelgrad demo``, the outcomes benchmark and ``labelgrad train``.

Every constant a recipe uses (the effective-number beta, the tail-row learning-rate power, the
logit-adjustment tau, the start of deferred re-weighting) and every method's step (policy, loss,
optimizer wrapper) is defined here once; the demo, ``bench --outcomes`` and ``train`` import
them, so a result of one is a result of the others' recipe. The metrics are in
:mod:`labelgrad.app.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import labelgrad as lg

__all__ = [
    "BETA",
    "DRW_FRACTION",
    "LA_TAU",
    "LONG_TAIL_METHODS",
    "MULTILABEL_METHODS",
    "SIGMOID_METHODS",
    "TAIL_LR_POWER",
    "Recipe",
    "StepFn",
    "effective_number_weights",
    "long_tail_recipe",
    "multilabel_step",
    "one_vs_all_bce",
    "tail_lr_scale",
]

BETA = 0.999
"""Effective-number beta of every ``class_weights`` recipe (Cui et al., CVPR 2019).

Chosen over the paper's CIFAR default 0.9999 because the bundled data sets are small: with at
most 131 (digits-LT) or 500 (Fashion-MNIST-LT) images per class, 1 - 0.9999^n is within 2.5 % of
n * 1e-4, so beta = 0.9999 is plain inverse frequency there and would not test the effective
number at all; 0.999 keeps its "diminishing returns" (head/tail weight ratio about 1/123 on
digits-LT IF=100, about 1/80 on Fashion-MNIST-LT IF=100). Used by the demo, the outcomes
benchmark (class_weights, deferred re-weighting, mask_unknown+class_weights)."""

TAIL_LR_POWER = 0.5
"""RowRules recipe: head row c steps with lr × (n_max / n_c) ** TAIL_LR_POWER, and rows of classes
absent from a batch do not move (``skip_absent=True``). Of the powers 0, 0.5 and 1 (with and
without skip_absent) tried on digits-LT IF=100, 0.5 with skip_absent did best; the outcomes
benchmark uses the same value (chosen on digits-LT, not on its data)."""

LA_TAU = 1.0
"""Logit adjustment: cross-entropy of ``logits + tau * log(prior)`` (Menon et al., ICLR 2021)."""

DRW_FRACTION = 2 / 3
"""Deferred re-weighting starts after this share of the training steps (Cao et al. 2019 start at
epoch 160 of 200; two thirds leaves the re-weighted phase long enough for a short schedule)."""

SIGMOID_METHODS = ("plain_sigmoid", "eqlv2")
"""Methods trained with per-class sigmoid BCE instead of softmax cross-entropy: EQLv2 is
defined for sigmoid classifiers (Tan et al. 2021), so it is compared with plain sigmoid too."""

LONG_TAIL_METHODS = (
    "plain_ce",
    "class_weights",
    "deferred_reweighting",
    "plain_sigmoid",
    "eqlv2",
    "row_rules",
    "logit_adjust",
    "seesaw",
    "logit_adjust+row_rules",
    "logit_adjusted",
)
"""Every single-label recipe :func:`long_tail_recipe` builds. ``plain_ce`` and ``plain_sigmoid``
are the baselines of the softmax and the sigmoid methods; ``logit_adjusted`` is the literature's
reference point (the logit-adjusted *loss*), not a labelgrad recipe; ``logit_adjust`` is the
policy of the same name under plain cross-entropy (the same gradient)."""

MULTILABEL_METHODS = (
    "unknown_as_negative",
    "mask_unknown",
    "mask_unknown+class_weights",
    "asymmetric_focus",
    "mask_unknown+asymmetric_focus",
    "sum",
)
"""The multi-label recipes of :func:`multilabel_step` besides ``"<Aggregator>[/engine]"``."""

StepFn = Callable[[Tensor, Tensor], None]
"""One training step on a batch ``(x, y)``."""


def effective_number_weights(counts: Tensor, beta: float = BETA) -> Tensor:
    """Class-balanced weights (Cui et al., CVPR 2019): (1 - beta) / (1 - beta^n_c), mean 1.

    Classes with no samples get weight 0.

    Example:
        >>> effective_number_weights(torch.tensor([100, 1]), 0.0).tolist()
        [1.0, 1.0]
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    n = counts.double()
    w = torch.where(n > 0, (1 - beta) / (1 - beta**n), 0.0)
    present = (n > 0).sum().clamp(min=1)
    return (w * present / w.sum()).float()


def tail_lr_scale(counts: Tensor, power: float = TAIL_LR_POWER) -> Tensor:
    """Per-row learning-rate scale (n_max / n_c) ** power, float32 (C,); absent classes count 1.

    Example:
        >>> tail_lr_scale(torch.tensor([100, 25, 1])).tolist()
        [1.0, 2.0, 10.0]
    """
    n = counts.double().clamp(min=1)
    return ((n.max() / n) ** float(power)).float()


def one_vs_all_bce(logits: Tensor, y: Tensor) -> Tensor:
    """Sigmoid BCE of class indices as C binary problems, summed over classes, mean over samples.

    The normalisation is fixed per sample (not per entry), which EQLv2's gradient statistics
    need to be comparable across batches.

    Example:
        >>> round(float(one_vs_all_bce(torch.zeros(2, 3), torch.tensor([0, 2]))), 4)  # 3 log 2
        2.0794
    """
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / len(y)


@dataclass
class Recipe:
    """A single-label method, built: the policy at the logits, the loss, the optimizer.

    Attributes:
        method: one of :data:`LONG_TAIL_METHODS`.
        policy: the policy applied to the logits (None: none).
        optimizer: the optimizer to step (a :class:`labelgrad.RowRules` for ``row_rules``).
        loss: ``loss(logits, y)``.
        rows: whether ``optimizer.step`` takes the batch's targets.
    """

    method: str
    policy: lg.Policy | None
    optimizer: Any
    loss: Callable[[Tensor, Tensor], Tensor]
    rows: bool = False

    def step(self, model: nn.Module) -> StepFn:
        """One training step of ``model`` with this recipe."""

        def step(xb: Tensor, yb: Tensor) -> None:
            self.optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            if self.policy is not None:
                logits = self.policy(logits, yb)
            self.loss(logits, yb).backward()
            if self.rows:
                self.optimizer.step(targets=yb)
            else:
                self.optimizer.step()

        return step


def long_tail_recipe(
    method: str,
    head: nn.Linear,
    optimizer: Any,
    counts: Tensor,
    *,
    total_steps: int,
    monitor: lg.GradMonitor | None = None,
) -> Recipe:
    """Build ``method`` (one of :data:`LONG_TAIL_METHODS`) for a model with the Linear ``head``.

    Args:
        method: the recipe's name.
        head: the model's last Linear layer (row c = class c; what ``row_rules`` scales).
        optimizer: the model's optimizer (wrapped by ``row_rules``).
        counts: (C,) training images per class.
        total_steps: the run's optimizer steps (deferred re-weighting starts at
            :data:`DRW_FRACTION` of them).
        monitor: a :func:`labelgrad.monitor` to chain after the method's policy.

    Example:
        >>> m = nn.Linear(3, 2)
        >>> r = long_tail_recipe("class_weights", m, torch.optim.SGD(m.parameters(), lr=0.1),
        ...                      torch.tensor([10, 1]), total_steps=5)
        >>> r.step(m)(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]))
    """
    if method not in LONG_TAIL_METHODS:
        raise ValueError(f"method must be one of {', '.join(LONG_TAIL_METHODS)}, got {method!r}")
    dev = head.weight.device
    c = counts.numel()
    policy: lg.Policy | None = None
    if method == "class_weights":
        policy = lg.class_weights(effective_number_weights(counts))
    elif method == "deferred_reweighting":
        start = int(DRW_FRACTION * total_steps)
        policy = lg.schedule(lg.class_weights(effective_number_weights(counts)), start_step=start)
    elif method == "eqlv2":
        policy = lg.eqlv2(num_classes=c)
    elif method in ("logit_adjust", "logit_adjust+row_rules"):
        policy = lg.logit_adjust(counts.float().clamp(min=1), tau=LA_TAU)
    elif method == "seesaw":
        policy = lg.seesaw(c)
    if method.endswith("row_rules"):
        # skip_absent: a batch without class c leaves row c (and its Adam moments) untouched,
        # so rare classes are not pushed down by every batch they are missing from.
        scale = tail_lr_scale(counts).to(dev)
        optimizer = lg.RowRules(optimizer, rows=head, lr_scale=scale, skip_absent=True)
    if monitor is not None:
        policy = monitor if policy is None else lg.chain(policy, monitor)
    if policy is not None:
        policy.to(dev)
    loss = _long_tail_loss(method, counts, dev)
    return Recipe(method, policy, optimizer, loss, rows=method.endswith("row_rules"))


def _long_tail_loss(
    method: str, counts: Tensor, dev: torch.device
) -> Callable[[Tensor, Tensor], Tensor]:
    if method in SIGMOID_METHODS:
        return one_vs_all_bce
    if method == "logit_adjusted":
        log_prior = torch.log(counts.double().clamp(min=1) / counts.sum()).float().to(dev)
        return lambda logits, y: F.cross_entropy(logits + LA_TAU * log_prior, y)
    return F.cross_entropy


def multilabel_step(
    method: str,
    model: Any,
    optimizer: Any,
    y_train: Tensor,
    *,
    monitor: lg.GradMonitor | None = None,
) -> StepFn:
    """One training step of a multi-label recipe (a model with ``features``, ``head``, ``trunk``).

    Args:
        method: one of :data:`MULTILABEL_METHODS` (unknown (-1) entries are 0-targets for
            ``unknown_as_negative``; ``mask_unknown`` zeroes their gradient; ``+class_weights``
            adds effective-number weights of the known positives; ``asymmetric_focus`` replaces
            the BCE gradient by that of ASL with its defaults), or ``"<Aggregator>"`` /
            ``"<Aggregator>/<engine>"`` (e.g. ``"UPGrad/exact"``): the per-label BCE losses
            aggregated on the trunk by :func:`labelgrad.aggregate_backward` (engine ``auto``
            without ``/engine``). ``sum`` is the plain mean BCE.
        model: an MLP-like model (``features(x)``, ``head``, ``trunk``).
        optimizer: its optimizer.
        y_train: the training labels (for the class weights).
        monitor: a :func:`labelgrad.monitor` chained after the policy (not with an aggregator).

    Example:
        >>> from labelgrad.app.training import MLP
        >>> m = MLP(3, [4], 2)
        >>> y = torch.tensor([[1, 0], [0, -1]])
        >>> multilabel_step("mask_unknown", m, torch.optim.SGD(m.parameters(), lr=0.1), y)(
        ...     torch.zeros(2, 3), y)
    """
    name, _, engine = method.partition("/")
    if name in MULTILABEL_METHODS and not engine:
        return _masked_bce_step(name, model, optimizer, y_train, monitor)
    aggregator = lg.aggregators.available().get(name)
    if aggregator is None:
        raise ValueError(
            f"method must be one of {', '.join(MULTILABEL_METHODS)} or an aggregator name of "
            f"lg.aggregators.available() (e.g. 'UPGrad' or 'UPGrad/exact'), got {method!r}"
        )
    return _aggregated_step(aggregator(), engine or "auto", model, optimizer)


def _masked_bce_step(
    name: str, model: Any, optimizer: Any, y_train: Tensor, monitor: lg.GradMonitor | None
) -> StepFn:
    policies: list[lg.Policy] = []
    if name.startswith("mask_unknown"):
        policies.append(lg.mask_unknown())
    if name == "mask_unknown+class_weights":
        policies.append(lg.class_weights(effective_number_weights((y_train == 1).sum(0))))
    if name.endswith("asymmetric_focus"):
        policies.append(lg.asymmetric_focus())
    if monitor is not None:
        policies.append(monitor)
    policy = lg.chain(*policies).to(model.head.weight.device) if policies else None

    def step(xb: Tensor, yb: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        if policy is not None:
            logits = policy(logits, yb)
        # Unknown (-1) entries are 0-targets here; mask_unknown zeroes their gradient.
        F.binary_cross_entropy_with_logits(logits, yb.clamp(min=0).float()).backward()
        optimizer.step()

    return step


def _aggregated_step(aggregator: Any, engine: Any, model: Any, optimizer: Any) -> StepFn:
    def step(xb: Tensor, yb: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        feats = model.features(xb)
        # The K per-label losses sum to the same mean BCE as the "sum" run.
        losses = lg.per_label_losses(model.head(feats), yb, loss="bce")
        extra: dict[str, Any] = {}
        if engine == "representation":
            extra = {"features": feats, "head": model.head}
        lg.aggregate_backward(losses, model.trunk.parameters(), aggregator, engine=engine, **extra)
        optimizer.step()

    return step
