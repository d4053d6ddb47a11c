"""The parts of one ``labelgrad train`` run built from its config (model, policy chain,
optimizer with its row rules, aggregator) and the training step that uses them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import labelgrad as lg
from labelgrad.app.datasets import Dataset
from labelgrad.app.recipes import effective_number_weights, tail_lr_scale
from labelgrad.app.train_config import ConfigError, TrainConfig
from labelgrad.app.train_data import MONITOR_HISTORY
from labelgrad.app.training import MLP

SOFTMAX_POLICIES = ("logit_adjust", "seesaw", "ldam_drw", "labels_trick")
"""Policies that replace a softmax cross-entropy gradient: single-label (multiclass) data only."""
BCE_POLICIES = ("asymmetric_focus",)
"""Policies that replace a binary cross-entropy gradient: multi-label data only (a multiclass
run's loss is softmax cross-entropy)."""


def _build_policy(
    cfg: TrainConfig, data: Dataset, history: int
) -> tuple[lg.Policy, lg.GradMonitor]:
    c = data.num_classes
    steps = math.ceil(len(data.x_train) / cfg.train["batch_size"])
    counts = data.train_counts()
    built: list[lg.Policy] = []
    for i, spec in enumerate(cfg.policies):
        name = spec["name"]
        where = f"{cfg.file.name}: [[policies]] #{i + 1} ({name})"
        if name in SOFTMAX_POLICIES and data.task != "multiclass":
            raise ConfigError(
                f"{where} replaces a softmax cross-entropy gradient: it needs single-label "
                "(multiclass) data, this is multilabel (binary cross-entropy per label)"
            )
        if name in BCE_POLICIES and data.task != "multilabel":
            raise ConfigError(
                f"{where} replaces a binary cross-entropy gradient: it needs multilabel data "
                "(a multiclass run trains softmax cross-entropy)"
            )
        if spec.get("start_epoch", 0) >= cfg.train["epochs"]:
            raise ConfigError(
                f"{where} start_epoch {spec['start_epoch']} is not before [train] epochs "
                f"{cfg.train['epochs']}: the policy would never apply"
            )
        if spec.get("drw_epoch", 0) >= cfg.train["epochs"]:
            raise ConfigError(
                f"{where} drw_epoch {spec['drw_epoch']} is not before [train] epochs "
                f"{cfg.train['epochs']}: the re-weighting would never start"
            )
        try:
            policy = _one_policy(spec, c, counts, steps)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{cfg.file.name}: [[policies]] {name}: {err}") from None
        if "start_epoch" in spec or "end_epoch" in spec:
            end = spec.get("end_epoch")
            policy = lg.schedule(
                policy, spec.get("start_epoch", 0) * steps, None if end is None else end * steps
            )
        built.append(policy)
    mon = lg.monitor(num_classes=c, history=history)
    try:  # the library's own rule on the order of gradient-replacing policies
        return lg.chain(*built, mon), mon
    except ValueError as err:
        raise ConfigError(f"{cfg.file.name}: [[policies]]: {err}") from None


def _one_policy(spec: Mapping[str, Any], c: int, counts: Tensor, steps: int) -> lg.Policy:
    """The policy of one [[policies]] entry; counts, priors and frequencies from ``counts``."""
    name = spec["name"]
    if name == "mask_unknown":
        return lg.mask_unknown()
    if name == "mask":
        return lg.mask(torch.tensor(spec["keep"], dtype=torch.bool))
    if name == "class_weights":
        w = (
            torch.tensor(spec["weights"], dtype=torch.float32)
            if "weights" in spec
            else effective_number_weights(counts, float(spec["beta"]))
        )
        return lg.class_weights(w)
    if name == "pos_neg_weights":
        return lg.pos_neg_weights(**_floats(spec, ("pos", "neg")))
    if name == "eqlv2":
        return lg.eqlv2(c, **_floats(spec, ("gamma", "mu", "alpha")))
    if name == "eql":
        freq = counts.double() / max(1, int(counts.sum()))
        return lg.eql(float(spec["freq_threshold"]), freq.float())
    if name == "logit_adjust":
        prior = lg.class_priors(counts, min_count=1)
        return lg.logit_adjust(prior, **_floats(spec, ("tau",)))
    if name == "seesaw":
        return lg.seesaw(c, **_floats(spec, ("p", "q", "eps")))
    if name == "ldam_drw":
        drw = spec.get("drw_epoch")
        return lg.ldam_drw(
            counts.float().clamp(min=1),
            **_floats(spec, ("max_margin", "s", "beta")),
            drw_start=None if drw is None else drw * steps,
        )
    if name == "labels_trick":
        # Without `classes`: cross-entropy over the classes present in each batch.
        return lg.labels_trick(spec.get("classes"))
    if name == "asymmetric_focus":
        return lg.asymmetric_focus(**_floats(spec, ("gamma_pos", "gamma_neg", "clip")))
    if name == "clip_per_class":
        return lg.clip_per_class(float(spec["max_norm"]))
    if name == "clip_per_sample":
        return lg.clip_per_sample(float(spec["max_norm"]))
    if name == "freeze_classes":
        return lg.freeze_classes(spec["classes"])
    raise AssertionError(f"policy {name!r} is in POLICY_KEYS but not built")  # pragma: no cover


def _floats(spec: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        if k in spec:
            v = spec[k]
            out[k] = torch.tensor(v, dtype=torch.float32) if isinstance(v, list) else float(v)
    return out


def _build_optimizer(cfg: TrainConfig, model: MLP, data: Dataset) -> Any:
    t = cfg.train
    params = model.parameters()
    opt: Any
    if t["optimizer"] == "sgd":
        opt = torch.optim.SGD(
            params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"]
        )
    elif t["optimizer"] == "adamw":
        opt = torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
    else:
        opt = torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"])
    if cfg.rows is None:
        return opt
    r = cfg.rows
    kwargs: dict[str, Any] = {"skip_absent": r["skip_absent"]}
    if r["frozen"] is not None:
        kwargs["frozen"] = r["frozen"]
    if r["lr_scale"] is not None:
        kwargs["lr_scale"] = torch.tensor(r["lr_scale"], dtype=torch.float32)
    elif r["lr_scale_power"] is not None:
        kwargs["lr_scale"] = tail_lr_scale(data.train_counts(), float(r["lr_scale_power"]))
    try:
        return lg.RowRules(opt, rows=model.head, **kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{cfg.file.name}: [rows]: {err}") from None


def _build_aggregator(
    cfg: TrainConfig, data: Dataset, seed: int, dev: torch.device
) -> tuple[Any, torch.Generator | None]:
    """The aggregator, and its own seeded generator where it draws random numbers (its state
    goes into the checkpoint: a resumed run draws what the uninterrupted run would)."""
    if cfg.aggregation is None:
        return None, None
    name = cfg.file.name
    if data.task != "multilabel":
        raise ConfigError(f"{name}: [aggregation] needs multilabel data (one loss per label)")
    cls = lg.aggregators.available()[cfg.aggregation["aggregator"]]
    gen = None
    if "generator" in inspect.signature(cls).parameters:
        gen = torch.Generator(device=dev).manual_seed(seed)
    try:
        return (cls(generator=gen) if gen is not None else cls()).to(dev), gen
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: [aggregation] {cfg.aggregation['aggregator']}: {err}") from None


@dataclass
class Parts:
    """The objects of one training run, built from the config."""

    model: MLP
    policy: lg.Policy
    monitor: lg.GradMonitor
    optimizer: Any
    aggregator: Any
    rows: bool
    engine: str = "auto"
    generator: torch.Generator | None = None
    unknown_as_negative: bool = False
    """Multi-label: unknown (-1) labels are 0-targets of a mean BCE over every entry (the
    ``--baseline unknown-as-negative`` run) instead of being left out of the loss."""


def build_parts(
    cfg: TrainConfig,
    data: Dataset,
    seed: int,
    dev: torch.device,
    *,
    unknown_as_negative: bool = False,
) -> Parts:
    torch.manual_seed(seed)
    model = MLP(data.x_train.shape[1], cfg.model["hidden"], data.num_classes).to(dev)
    policy, mon = _build_policy(cfg, data, history=MONITOR_HISTORY)
    policy.to(dev)
    opt = _build_optimizer(cfg, model, data)
    engine = cfg.aggregation["engine"] if cfg.aggregation is not None else "auto"
    aggregator, gen = _build_aggregator(cfg, data, seed, dev)
    rows = cfg.rows is not None
    return Parts(model, policy, mon, opt, aggregator, rows, engine, gen, unknown_as_negative)


def make_step(parts: Parts, multilabel: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """One optimizer step on a batch; returns the batch's loss (no host sync)."""
    model, policy, opt, aggregator = parts.model, parts.policy, parts.optimizer, parts.aggregator
    engine: Any = parts.engine

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        feats = model.features(xb)
        logits = policy(model.head(feats), yb)
        loss: Tensor
        if multilabel and parts.unknown_as_negative:
            loss = F.binary_cross_entropy_with_logits(logits, yb.clamp(min=0).to(logits.dtype))
            loss.backward()
        elif multilabel:
            # Mean BCE over the known entries: unknown (-1) labels contribute nothing, with or
            # without aggregation (the K losses sum to the plain loss).
            losses = lg.per_label_losses(logits, yb, loss="bce")
            if aggregator is not None:
                extra: dict[str, Any] = {}
                if parts.engine == "representation":
                    extra = {"features": feats, "head": model.head}
                lg.aggregate_backward(
                    losses, model.trunk.parameters(), aggregator, engine=engine, **extra
                )
                loss = losses.detach().sum()
            else:
                loss = losses.sum()
                loss.backward()
        else:
            loss = F.cross_entropy(logits, yb)
            loss.backward()
        if parts.rows and multilabel:
            # Multi-hot labels of a C-label head: say so, never let the shape decide.
            opt.observe(yb, encoding="multi_hot")
            opt.step()
        elif parts.rows:
            opt.step(targets=yb)
        else:
            opt.step()
        return loss.detach()

    return step
