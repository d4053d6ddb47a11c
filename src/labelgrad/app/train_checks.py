"""The checks of a ``labelgrad train`` run that need its data, all made before the first step.

:func:`~labelgrad.app.train_config.load_config` checks each key on its own; :func:`validate_run`
checks the config against the data: per-class lengths and class ranges, patience against the
validation split, and the aggregator and engine on a dry run of one aggregation step with the
data's number of labels (the aggregator's and engine's own checks, e.g. Krum's K >= 3, answer
there, before any training). It returns the warnings the data gave (classes without a training
sample), for a run that is still valid.
"""

from __future__ import annotations

from typing import Any

import torch

import labelgrad as lg
from labelgrad.app.datasets import Dataset
from labelgrad.app.train_config import ConfigError, TrainConfig, check_against_classes
from labelgrad.app.train_data import Validation
from labelgrad.app.training import MLP

__all__ = ["validate_run"]


def validate_run(cfg: TrainConfig, data: Dataset, val: Validation) -> list[str]:
    """Check ``cfg`` against the data before training; returns the data's warnings.

    Raises:
        ConfigError: one line naming the table and key.

    Example:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from labelgrad.app.train_config import load_config
        >>> from labelgrad.app.train_data import load_data
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> y = np.eye(2, dtype=int)[np.arange(20) % 2]  # 2 labels
        >>> np.savez(d / "m.npz", x=np.random.rand(20, 3), y=y)
        >>> _ = (d / "c.toml").write_text(
        ...     '[data]\\npath = "m.npz"\\n[aggregation]\\naggregator = "Krum"\\n')
        >>> cfg = load_config(d / "c.toml")
        >>> validate_run(cfg, *load_data(cfg, 0))
        Traceback (most recent call last):
        ...
        labelgrad.app.train_config.ConfigError: c.toml: [aggregation] aggregator = 'Krum' ...
    """
    check_against_classes(cfg, data.num_classes)
    file = cfg.file.name
    if cfg.train["patience"] > 0 and len(val.y) == 0:
        raise ConfigError(
            f"{file}: [train] patience = {cfg.train['patience']} needs a validation split "
            f"([data] validation_fraction = {cfg.data['validation_fraction']} leaves no sample)"
        )
    if cfg.aggregation is not None:
        _dry_run_aggregation(cfg, data)
    warnings: Any = data.meta.get("warnings", [])
    return [str(w) for w in warnings]


def _dry_run_aggregation(cfg: TrainConfig, data: Dataset) -> None:
    """One aggregation step of a tiny copy of the run (fresh aggregator, the run's K, engine and
    trunk depth), so that every aggregator's and engine's own refusal comes before training."""
    agg_cfg = cfg.aggregation
    assert agg_cfg is not None
    name, engine = agg_cfg["aggregator"], agg_cfg["engine"]
    where = f"{cfg.file.name}: [aggregation] aggregator = {name!r}"
    if data.task != "multilabel":
        raise ConfigError(f"{where} needs multilabel data (one loss per label)")
    k = data.num_classes
    gen = torch.Generator().manual_seed(0)
    model = MLP(2, [2] * len(cfg.model["hidden"]), k)
    x = torch.randn(4, 2, generator=gen)
    y = torch.ones(4, k, dtype=torch.long)
    y[::2] = 0
    feats = model.features(x)
    losses = lg.per_label_losses(model.head(feats), y, loss="bce")
    extra: dict[str, Any] = {}
    if engine == "representation":
        extra = {"features": feats, "head": model.head}
    try:
        aggregator = getattr(lg.aggregators, name)()
        lg.aggregate_backward(losses, model.trunk.parameters(), aggregator, engine=engine, **extra)
    except (ValueError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{where} cannot run on {k} labels with [model] hidden = {cfg.model['hidden']} and "
            f"engine = {engine!r}: {first}"
        ) from None
