"""The parts of one ``labelgrad train`` run built from its config (model, policy chain,
optimizer with its row rules, aggregator) and the training step that uses them.
"""

from __future__ import annotations

import inspect
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


def _build_policy(
    cfg: TrainConfig, data: Dataset, history: int
) -> tuple[lg.Policy, lg.GradMonitor]:
    c = data.num_classes
    built: list[lg.Policy] = []
    for spec in cfg.policies:
        name = spec["name"]
        try:
            if name == "mask_unknown":
                built.append(lg.mask_unknown())
            elif name == "class_weights":
                w = (
                    torch.tensor(spec["weights"], dtype=torch.float32)
                    if "weights" in spec
                    else effective_number_weights(data.train_counts(), float(spec["beta"]))
                )
                built.append(lg.class_weights(w))
            elif name == "pos_neg_weights":
                built.append(lg.pos_neg_weights(**_floats(spec, ("pos", "neg"))))
            elif name == "eqlv2":
                built.append(lg.eqlv2(c, **_floats(spec, ("gamma", "mu", "alpha"))))
            elif name == "clip_per_class":
                built.append(lg.clip_per_class(float(spec["max_norm"])))
            elif name == "clip_per_sample":
                built.append(lg.clip_per_sample(float(spec["max_norm"])))
            elif name == "freeze_classes":
                built.append(lg.freeze_classes(spec["classes"]))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{cfg.file.name}: [[policies]] {name}: {err}") from None
    mon = lg.monitor(num_classes=c, history=history)
    return lg.chain(*built, mon), mon


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


def build_parts(cfg: TrainConfig, data: Dataset, seed: int, dev: torch.device) -> Parts:
    torch.manual_seed(seed)
    model = MLP(data.x_train.shape[1], cfg.model["hidden"], data.num_classes).to(dev)
    policy, mon = _build_policy(cfg, data, history=MONITOR_HISTORY)
    policy.to(dev)
    opt = _build_optimizer(cfg, model, data)
    engine = cfg.aggregation["engine"] if cfg.aggregation is not None else "auto"
    aggregator, gen = _build_aggregator(cfg, data, seed, dev)
    return Parts(model, policy, mon, opt, aggregator, cfg.rows is not None, engine, gen)


def make_step(parts: Parts, multilabel: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """One optimizer step on a batch; returns the batch's loss (no host sync)."""
    model, policy, opt, aggregator = parts.model, parts.policy, parts.optimizer, parts.aggregator
    engine: Any = parts.engine

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        opt.zero_grad(set_to_none=True)
        feats = model.features(xb)
        logits = policy(model.head(feats), yb)
        loss: Tensor
        if multilabel:
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
