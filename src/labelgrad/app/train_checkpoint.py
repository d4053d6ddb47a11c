"""The checkpoint of ``labelgrad train``: what it records, writing it atomically (a full disk
keeps the previous one), and the checks a resume makes before loading anything.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from labelgrad.app.datasets import DataError
from labelgrad.app.outputs import OutputError
from labelgrad.app.train_build import Parts
from labelgrad.app.train_config import ConfigError, TrainConfig
from labelgrad.report import atomic_path

CHECKPOINT_VERSION = 3
"""Version 2 adds the seed and the data's identity (path, size, SHA-256) to the checkpoint;
version 3 the aggregator's state and its random generator's state."""
CHECKPOINT_KEYS = ("version", "fingerprint", "seed", "data", "epoch", "model", "optimizer")
_CHECKPOINT_REST = ("policy", "aggregator", "rng", "losses", "validation")


def data_identity(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Path, size and SHA-256 of each data file: a checkpoint resumes only on the same data."""
    out = []
    for key in ("path", "labels"):
        if cfg.data[key] is None:
            continue
        path = Path(cfg.data[key])
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out.append({"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()})
    return out


def run_identity(cfg: TrainConfig, seed: int, data: list[dict[str, Any]]) -> str:
    """Every setting of a run (all keys, epochs included), its seed and its data, hashed: the
    output folder's manifest records it, and only the same run may replace a run's files."""
    payload = {
        "config": [cfg.data, cfg.model, cfg.train, cfg.policies, cfg.rows, cfg.aggregation],
        "seed": seed,
        "data": data,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def resume_run(ckpt_path: Path, run: RunId, parts: Parts, dev: torch.device, echo: Any) -> History:
    """Restore the run from ``ckpt_path``; returns its history (empty without a checkpoint)."""
    if not ckpt_path.exists():
        if echo is not None:
            echo(f"no checkpoint at {ckpt_path}: starting from epoch 0")
        return History()
    try:
        state = torch.load(ckpt_path, map_location=dev, weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{ckpt_path}: cannot load checkpoint ({first})") from None
    _check_identity(state, ckpt_path, run)
    history = _check_progress(state, ckpt_path, run)
    _load_states(state, ckpt_path, parts)
    return history


@dataclass(frozen=True)
class RunId:
    """What a checkpoint must match to resume: config, seed, data, and the run's shape."""

    cfg: TrainConfig
    seed: int
    data: list[dict[str, Any]]
    steps_per_epoch: int


def _check_identity(state: Any, path: Path, run: RunId) -> None:
    if not isinstance(state, dict) or not set(CHECKPOINT_KEYS) & set(state):
        raise DataError(f"{path}: not a labelgrad checkpoint (no labelgrad train keys)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise DataError(
            f"{path}: checkpoint version {state.get('version')!r}; this labelgrad reads version "
            f"{CHECKPOINT_VERSION} (start again without --resume)"
        )
    missing = [k for k in (*CHECKPOINT_KEYS, *_CHECKPOINT_REST) if k not in state]
    if missing:
        raise DataError(f"{path}: not a labelgrad checkpoint (missing {', '.join(missing)})")
    if state["seed"] != run.seed or type(state["seed"]) is not int:
        raise ConfigError(
            f"{path} was written with --seed {state['seed']!r}, this run has --seed {run.seed} "
            "(another seed draws another train/test split: test data would leak into training)"
        )
    if state["data"] != run.data:
        was = state["data"][0] if isinstance(state["data"], list) and state["data"] else {}
        now = run.data[0]
        raise ConfigError(
            f"{path} was written for other data ({was.get('path')}, {was.get('size')} bytes, "
            f"sha256 {str(was.get('sha256'))[:12]}); this run reads {now['path']}, "
            f"{now['size']} bytes, sha256 {now['sha256'][:12]}"
        )
    if state["fingerprint"] != run.cfg.fingerprint():
        raise ConfigError(
            f"{path} was written for a different config (only [train] epochs may change)"
        )


def _check_progress(state: dict[str, Any], path: Path, run: RunId) -> History:
    epoch, losses, epochs = state["epoch"], state["losses"], run.cfg.train["epochs"]
    if type(epoch) is not int or not 0 <= epoch <= epochs:
        raise DataError(
            f"{path}: epoch must be an integer in 0..{epochs} ([train] epochs), got {epoch!r}"
        )
    ok = (
        isinstance(losses, list)
        and len(losses) == epoch
        and all(
            isinstance(e, list)
            and len(e) == run.steps_per_epoch
            and all(isinstance(v, float) and math.isfinite(v) for v in e)
            for e in losses
        )
    )
    if not ok:
        raise DataError(
            f"{path}: losses must be {epoch} lists of {run.steps_per_epoch} finite floats "
            "(one per step of each epoch done)"
        )
    val = state["validation"]
    ok = isinstance(val, dict) and all(
        isinstance(val.get(k), list)
        and len(val[k]) == epoch
        and all(isinstance(v, float) for v in val[k])
        for k in ("val_loss", "val_metric")
    )
    if not ok:
        raise DataError(
            f"{path}: validation must hold val_loss and val_metric, {epoch} floats each"
        )
    return History([list(e) for e in losses], list(val["val_loss"]), list(val["val_metric"]))


def _load_states(state: dict[str, Any], path: Path, parts: Parts) -> None:
    for key, obj in (
        ("model", parts.model),
        ("optimizer", parts.optimizer),
        ("policy", parts.policy),
    ):
        saved = state[key]
        if not isinstance(saved, dict):
            raise DataError(f"{path}: {key} must be a state dict, got {type(saved).__name__}")
        problem = _mismatch(obj.state_dict(), saved, key)
        if problem is None:
            try:
                obj.load_state_dict(saved)
            except Exception as err:
                problem = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        if problem is not None:
            raise DataError(f"{path}: {key} state does not fit this run: {problem}")
    _check_optimizer_state(parts, path)
    _load_aggregator(state, path, parts)


def _load_aggregator(state: dict[str, Any], path: Path, parts: Parts) -> None:
    """The aggregator's state (shaped by K, so loaded strictly rather than compared with a fresh
    one) and its generator's state."""
    saved, rng = state["aggregator"], state["rng"]
    agg, gen = parts.aggregator, parts.generator
    if not isinstance(saved, dict) or (agg is None and saved):
        raise DataError(f"{path}: aggregator must be a state dict of this run's aggregator")
    if (gen is None) != (rng is None) or (rng is not None and not isinstance(rng, Tensor)):
        raise DataError(f"{path}: rng must be {'a tensor' if gen is not None else 'None'}")
    try:
        if agg is not None:
            agg.load_state_dict(saved)
        if gen is not None and isinstance(rng, Tensor):
            gen.set_state(rng.cpu())
    except Exception as err:
        problem = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise DataError(f"{path}: aggregator state does not fit this run: {problem}") from None


def _mismatch(fresh: Any, saved: Any, where: str) -> str | None:
    """The first place where ``saved`` differs in type or tensor shape from ``fresh``, or None.

    Only the structure the fresh object already has is compared (an optimizer's per-parameter
    state appears after its first step and is checked by :func:`_check_optimizer_state`).
    """
    if isinstance(fresh, Tensor):
        if not isinstance(saved, Tensor):
            return f"{where} must be a tensor, got {type(saved).__name__}"
        if saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            return (
                f"{where} is {saved.dtype} {tuple(saved.shape)}, expected {fresh.dtype} "
                f"{tuple(fresh.shape)}"
            )
        return None
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            return f"{where} must be a dict, got {type(saved).__name__}"
        for k, v in fresh.items():
            if k == "state" and where == "optimizer":
                continue
            if k not in saved:
                return f"{where}.{k} is missing"
            found = _mismatch(v, saved[k], f"{where}.{k}")
            if found:
                return found
        return None
    if isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            return f"{where} must have {len(fresh)} entries"
        for i, (a, b) in enumerate(zip(fresh, saved)):
            found = _mismatch(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    numbers = isinstance(fresh, (int, float)) and isinstance(saved, (int, float))
    if fresh is not None and saved is not None and type(fresh) is not type(saved) and not numbers:
        return f"{where} must be {type(fresh).__name__}, got {saved!r}"
    return None


def _check_optimizer_state(parts: Parts, path: Path) -> None:
    """Every loaded per-parameter state tensor is a scalar or shaped like its parameter."""
    opt = parts.optimizer
    inner = getattr(opt, "optimizer", opt)
    for group in inner.param_groups:
        for p in group["params"]:
            for k, v in inner.state.get(p, {}).items():
                if isinstance(v, Tensor) and v.numel() != 1 and v.shape != p.shape:
                    raise DataError(
                        f"{path}: optimizer state {k!r} is {tuple(v.shape)}, expected "
                        f"{tuple(p.shape)} (its parameter's shape)"
                    )


@dataclass
class History:
    """Per-step training losses and per-epoch validation loss and metric (NaN: no validation)."""

    losses: list[list[float]] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    stopped_early: bool = False

    def epoch_loss(self) -> list[float]:
        """The mean training loss of each epoch."""
        return [sum(e) / len(e) for e in self.losses]

    def stalled(self, patience: int) -> bool:
        """No validation improvement in the last ``patience`` epochs (patience 0: never)."""
        v = [m for m in self.val_metric if not math.isnan(m)]
        return patience > 0 and len(v) > patience and max(v[-patience:]) <= max(v[:-patience])

    def still_rising(self) -> bool:
        """The last epoch set a new best validation metric (more epochs would likely help)."""
        v = [m for m in self.val_metric if not math.isnan(m)]
        return len(v) > 1 and v[-1] > max(v[:-1])

    def as_dict(self) -> dict[str, Any]:
        """For the checkpoint (and metrics.json)."""
        return {"val_loss": self.val_loss, "val_metric": self.val_metric}


def save_checkpoint(path: Path, run: RunId, parts: Parts, history: History) -> None:
    epoch = len(history.losses)
    state = {
        "version": CHECKPOINT_VERSION,
        "fingerprint": run.cfg.fingerprint(),
        "seed": run.seed,
        "data": run.data,
        "epoch": epoch,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "policy": parts.policy.state_dict(),
        "aggregator": parts.aggregator.state_dict() if parts.aggregator is not None else {},
        "rng": parts.generator.get_state() if parts.generator is not None else None,
        "losses": history.losses,
        "validation": history.as_dict(),
    }
    buf = io.BytesIO()
    torch.save(state, buf)  # serialised in memory: a write error below is a plain OSError
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "nothing written"
        raise OutputError(
            f"cannot write {path}: no space left on {_device_of(path)} ({kept})"
        ) from None


def _device_of(path: Path) -> str:
    """The mount point holding ``path`` (where space ran out)."""
    p = path.resolve().parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return f"the device of {p}"
