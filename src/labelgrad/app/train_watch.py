"""What a ``labelgrad train`` run watches besides its metrics: its training loss (a NaN stops the
run, a diverging loss is a warning), its validation split (too few samples of a class is a
warning) and its best validation epoch (kept, and restored for the test, under patience).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from labelgrad.app.datasets import Dataset
from labelgrad.app.train_checkpoint import History
from labelgrad.app.train_config import TrainConfig
from labelgrad.app.train_data import Validation
from labelgrad.report import atomic_path

__all__ = [
    "DIVERGENCE",
    "HANDFUL",
    "Best",
    "check_finite",
    "loss_warnings",
    "resume_best",
    "save_best",
    "validation_warnings",
]

HANDFUL = 5
"""A class with fewer validation samples (multi-label: known positives) than this makes the
validation metric, and early stopping on it, noise for that class: the run warns."""

DIVERGENCE = 2.0
"""A run whose last epoch loss is above DIVERGENCE x its lowest epoch loss (and above half its
first) is diverging: the run warns."""


@dataclass
class Best:
    """The best validation epoch of a run with patience (1-based; 0: none) and its weights."""

    epoch: int = 0
    metric: float = -math.inf
    state: dict[str, Tensor] | None = None
    restored: bool = False


def check_finite(name: str, epoch: int, losses: list[float], history: History) -> None:
    """Stop the run at a NaN or infinite training loss, saying where and how it got there."""
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is None:
        return
    before = history.epoch_loss()
    trend = f" after epoch losses {', '.join(f'{v:.3g}' for v in before[-4:])}" if before else ""
    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint was written"
    raise FloatingPointError(
        f"{name} run: the training loss became {losses[bad]} at step {bad + 1} of epoch "
        f"{epoch + 1}{trend}; training stopped ({kept}). Lower [train] lr, or the policy or "
        "[rows] settings that scale the gradient or the step"
    )


def save_best(path: Path, best: Best) -> None:
    with atomic_path(path) as tmp:
        torch.save({"epoch": best.epoch, "metric": best.metric, "model": best.state}, tmp)


def resume_best(history: History, path: Path | None) -> Best:
    """The best epoch of the epochs already trained, with its weights from ``best_model.pt``."""
    v = history.val_metric
    finite = [(m, -i) for i, m in enumerate(v) if not math.isnan(m)]
    if not finite:
        return Best()
    metric, neg = max(finite)  # the first epoch of the best metric, as the run would pick
    best = Best(epoch=1 - neg, metric=metric)
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # an unreadable file: the run says it cannot restore (summary)
            return best
        if isinstance(saved, dict) and saved.get("epoch") == best.epoch:
            best.state = saved.get("model")
    return best


def loss_warnings(name: str, epoch_loss: list[float]) -> list[str]:
    """A diverging run: its last epoch loss far above its lowest (see :data:`DIVERGENCE`)."""
    if len(epoch_loss) < 2:
        return []
    low = min(range(len(epoch_loss)), key=epoch_loss.__getitem__)
    first, last = epoch_loss[0], epoch_loss[-1]
    if not (last > DIVERGENCE * epoch_loss[low] and last > 0.5 * first):
        return []
    return [
        f"{name} run: the training loss diverges: it fell to {epoch_loss[low]:.3g} (epoch "
        f"{low + 1}) and rose to {last:.3g} (epoch {len(epoch_loss)}); the test metrics are "
        "those of a diverging model. Lower [train] lr, or the [rows] lr_scale / policy weights "
        "that enlarge some steps"
    ]


def validation_warnings(cfg: TrainConfig, data: Dataset, val: Validation) -> list[str]:
    """Classes with fewer than :data:`HANDFUL` validation samples (known positives)."""
    if len(val.y) == 0:
        return []
    c = data.num_classes
    if data.task == "multiclass":
        counts = torch.bincount(val.y, minlength=c)
    else:
        counts = (val.y == 1).sum(dim=0)
    few = [(k, n) for k, n in enumerate(counts.tolist()) if n < HANDFUL]
    if not few:
        return []
    listed = ", ".join(f"{data.class_names[k]!r}: {n}" for k, n in few[:5])
    more = f" and {len(few) - 5} more" if len(few) > 5 else ""
    what = "samples" if data.task == "multiclass" else "positive samples"
    reads = ", and early stopping on it ([train] patience)," if cfg.train["patience"] > 0 else ""
    return [
        f"the validation split holds fewer than {HANDFUL} {what} of {len(few)} of {c} classes "
        f"({listed}{more}): the validation metric{reads} judges those classes on noise; raise "
        "[data] validation_fraction"
    ]
