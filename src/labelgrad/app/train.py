"""``labelgrad train CONFIG.toml``: an MLP on the user's data with declared gradient control.

The config (TOML) has these tables; every key is checked (unknown keys, wrong types and missing
files are one-line errors)::

    [data]                      # required
    path = "train.csv"          # .csv / .csv.gz, .npz, or an idx images file (.gz or raw)
    format = "csv"              # csv | npz | idx; default: from the suffix
    labels = "labels.idx.gz"    # idx only: the labels file
    label_columns = [-1]        # csv only: the label column(s), indices or header names
                                #   (["species"]); several = multi-hot labels; one column of
                                #   names (cat, dog) = classes numbered in sorted name order
    delimiter = ";"             # csv only; default: sniffed (comma, semicolon, tab or |)
    header = true               # csv only: whether the first row names the columns; default:
                                #   told from the cells (a row of numbers only reads as data)
    x_key = "x"                 # npz only (with y_key = "y")
    task = "multiclass"         # or "multilabel" (multi-hot labels in {0, 1}, -1 = unknown)
    num_classes = 10            # default: max label + 1 (multiclass; refused when most class
                                #   ids would have no sample: a label typo) / label columns
    test_fraction = 0.2         # seeded split (seed = --seed)
    validation_fraction = 0.1   # carved from the rest: early stopping and the "still rising"
                                #   warning read it (0: no validation split)
    standardize = true          # z-score features with training statistics

    [model]
    hidden = [128]              # hidden layer widths of the MLP

    [train]
    epochs = 10
    patience = 0                # > 0: stop when the validation metric has not improved for
                                #   this many epochs (0: train every epoch)
    lr = 0.001
    batch_size = 64
    optimizer = "adam"          # adam | adamw | sgd (any case: "AdamW" too)
    weight_decay = 0.0
    momentum = 0.9              # sgd only

    [[policies]]                # level 1, applied in order at the logits
    name = "logit_adjust"       # any lg policy, with its keys (others take their defaults):
    tau = 1.0                   #   logit_adjust (tau), seesaw (p, q, eps),
                                #   ldam_drw (max_margin, s, beta, drw_epoch): multiclass only
                                #   labels_trick (classes): multiclass only
                            #   asymmetric_focus (gamma_pos, gamma_neg, clip): multilabel
                                #   class_weights (weights = [...] or beta: effective number),
                                #   eqlv2 (gamma, mu, alpha), eql (freq_threshold),
                                #   pos_neg_weights (pos, neg), mask (keep = [true, ...]),
                                #   mask_unknown, freeze_classes (classes),
                                #   clip_per_class / clip_per_sample (max_norm)
    start_epoch = 0             # any policy: apply from this epoch (0-based) until before
                                #   end_epoch (lg.schedule); the class counts, priors and
                                #   frequencies of logit_adjust, ldam_drw, eql come from the
                                #   training data

    [rows]                      # level 2: lg.RowRules on the head
    frozen = [0]
    lr_scale = [1.0, 2.0]       # or lr_scale_power = 0.5: row c gets (n_max / n_c) ** power
    skip_absent = true

    [aggregation]               # level 3 (multilabel): lg.aggregate_backward on the trunk
    aggregator = "UPGrad"       # an lg.aggregators class (the error lists the valid names)
    engine = "auto"             # auto | exact | representation

Outputs in ``--out`` (default ``labelgrad-out/train``; checked before anything is read by
:func:`labelgrad.app.outputs.claim_output`: a folder holding another run needs ``--force`` or
``--resume``), each written atomically (a temporary file renamed into place):
``checkpoint.pt`` after every epoch (``torch.save``; loaded with ``weights_only=True``),
``best_model.pt`` with ``[train] patience`` (the best validation epoch's weights, which the test
uses),
``metrics.json`` (written before any figure), ``monitor.csv`` / ``monitor.json`` (per-class
gradient statistics), ``training_curves.png``, ``per_class.png``, ``confusion.png``
(single-label), ``grad_norm.png``, ``report.html`` (which lists them) and
``labelgrad-run.json`` (the manifest of the run's files). ``--baseline`` also trains a baseline
(:data:`BASELINES`) from the same seed and reports it beside the run.

``--resume`` continues from the checkpoint exactly as an uninterrupted run would (the batches of
each epoch are a function of the seed and the epoch; model, optimizer (with its row rules),
policy, aggregator state and the aggregator's random generator are restored, and MKL is asked
for alignment-independent results, :func:`labelgrad.app.cli.reproducible_blas`). The checkpoint
records the config, the seed and the data (path, size, SHA-256); a resume with another seed or
other data is refused, and every loaded field (epoch, losses, tensor shapes and dtypes of the
model, optimizer and policy states) is checked first.

Every bad input (config, data, flag, checkpoint, a full disk) is one line on stderr and exit 2;
values that would size an allocation (num_classes, hidden widths, labels) are checked against
the memory they would need before anything is allocated. The config is then checked against
the data before the first step (:func:`labelgrad.app.train_checks.validate_run`).

This module runs the epochs and writes the summary; the config is read and checked in
:mod:`labelgrad.app.train_config`, the data in :mod:`labelgrad.app.train_data`, the model,
policy, optimizer and step are built in :mod:`labelgrad.app.train_build`, the checkpoint is
:mod:`labelgrad.app.train_checkpoint`, and the loss, validation and best-epoch watch is
:mod:`labelgrad.app.train_watch`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import labelgrad as lg
from labelgrad.app.datasets import Dataset, Task
from labelgrad.app.metrics import multiclass_metrics, multilabel_metrics
from labelgrad.app.outputs import DEFAULT_OUT, claim_output, record_output
from labelgrad.app.train_build import Parts, build_parts, make_step
from labelgrad.app.train_checkpoint import (
    History,
    RunId,
    data_identity,
    resume_run,
    run_identity,
    save_checkpoint,
)
from labelgrad.app.train_checks import validate_run
from labelgrad.app.train_config import ConfigError, TrainConfig, load_config
from labelgrad.app.train_data import Validation, load_data
from labelgrad.app.train_report import (
    BASELINE_LABELS,
    METRIC_LABELS,
    TRAIN_FILES,
    write_train_outputs,
)
from labelgrad.app.train_watch import (
    Best,
    check_finite,
    loss_warnings,
    resume_best,
    save_best,
    validation_warnings,
)
from labelgrad.app.training import MLP, epoch_batches, progress_bar

__all__ = ["run_train"]


VAL_METRIC = {"multiclass": "balanced_accuracy", "multilabel": "macro_f1"}
"""The validation (and headline test) metric of each task."""

BASELINES = ("plain", "unknown-as-negative")
"""What ``--baseline`` trains beside the configured run, from the same seed: ``plain``, the plain
loss (cross-entropy; multi-label: mean BCE over the known labels, unknown ones left out);
``unknown-as-negative`` (multi-label only), BCE with the unknown (-1) labels as negatives, the
common practice that masking unknown labels is measured against."""


def _validate(model: MLP, val: Validation, task: Task, dev: torch.device) -> tuple[float, float]:
    """(loss, metric) of the plain model on the validation split; NaN without one."""
    if len(val.y) == 0:
        return math.nan, math.nan
    with torch.no_grad():
        logits = model(val.x.to(dev)).cpu()
    if task == "multiclass":
        loss = F.cross_entropy(logits, val.y)
        metrics, _ = multiclass_metrics(logits, val.y, logits.shape[1])
    else:
        loss = lg.per_label_losses(logits, val.y, loss="bce").sum()
        metrics, _ = multilabel_metrics(torch.sigmoid(logits), val.y)
    return float(loss), metrics[VAL_METRIC[task]]


def _train_epochs(
    name: str,
    run: RunId,
    parts: Parts,
    data: Dataset,
    val: Validation,
    dev: torch.device,
    history: History,
    ckpt_path: Path | None,
    bar: Any,
) -> Best:
    """Train to the configured epochs (or an early stop), checkpointing after each epoch.

    With patience, the weights of the best validation epoch are kept (and, beside a checkpoint,
    written to ``best_model.pt`` so that a resumed run has them) and restored at the end.

    Raises:
        FloatingPointError: the training loss became NaN or infinite (the run stops; the
            checkpoint of the last finished epoch is kept).
    """
    seed, t = run.seed, run.cfg.train
    x, y = data.x_train.to(dev), data.y_train.to(dev)
    step = make_step(parts, data.task == "multilabel")
    best_path = None if ckpt_path is None else ckpt_path.with_name("best_model.pt")
    best = resume_best(history, best_path) if t["patience"] > 0 else Best()
    for epoch in range(len(history.losses), t["epochs"]):
        if history.stalled(t["patience"]):
            history.stopped_early = True
            # The steps not taken leave the bar: it ends at 100 %, not where training stopped.
            if hasattr(bar, "total") and bar.total is not None:
                bar.total -= (t["epochs"] - epoch) * run.steps_per_epoch
                bar.refresh()
            break
        losses_t = []
        for idx in epoch_batches(len(x), t["batch_size"], seed=seed, epoch=epoch):
            losses_t.append(step(x[idx], y[idx]))
            bar.update()
        epoch_losses = torch.stack(losses_t).tolist()  # one host sync per epoch
        check_finite(name, epoch, epoch_losses, history)
        history.losses.append(epoch_losses)
        val_loss, val_metric = _validate(parts.model, val, data.task, dev)
        history.val_loss.append(val_loss)
        history.val_metric.append(val_metric)
        if t["patience"] > 0 and val_metric > best.metric:  # NaN (no validation) never is
            best.epoch, best.metric = epoch + 1, val_metric
            best.state = {
                k: v.detach().to("cpu", copy=True) for k, v in parts.model.state_dict().items()
            }
            if best_path is not None:
                save_best(best_path, best)
        bar.set_postfix_str(f"epoch {epoch + 1} loss {history.epoch_loss()[-1]:.4f}")
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, run, parts, history)
    if best.epoch and best.epoch != len(history.losses) and best.state is not None:
        parts.model.load_state_dict(best.state)
        best.restored = True
    return best


def run_train(
    config: str | Path,
    *,
    out: str | Path = DEFAULT_OUT["train"],
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
    baseline: bool | str = False,
    echo: Callable[[str], None] | None = print,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train as ``config`` declares; write checkpoint, metrics and report into ``out``.

    Args:
        config: the TOML config.
        out: the output folder.
        seed: the seed of the data split, the initialisation and the batches.
        device: where to train.
        resume: continue from ``out/checkpoint.pt`` (same config, seed and data only).
        force: replace the run ``out`` holds although its config, seed or data differ (its
            files are removed first).
        quiet: no progress bar.
        baseline: also train a baseline with the same seed, model and optimizer, and report it
            beside the configured run: one of :data:`BASELINES` (True: ``"plain"``).
        echo: where the summary lines go (None: nowhere).
        warn: where warnings go (default: stderr).

    Returns:
        A JSON-ready summary: per-epoch losses and validation metrics, per-step losses, test
        metrics (and the baseline's), notes and warnings, files.

    Raises:
        ConfigError: the config is invalid, or the checkpoint belongs to another config, seed
            or data.
        DataError: the data files or the checkpoint are corrupt, or labels out of range.
        OutputError: ``out`` is empty, a file, or holds another run (without ``force`` or
            ``resume``), or the disk is full (the previous checkpoint is kept).
        PermissionError: ``out`` cannot be written.
    """
    warn = warn or (lambda msg: print(f"labelgrad train: warning: {msg}", file=sys.stderr))
    kind = "plain" if baseline is True else baseline or None
    if kind is not None and kind not in BASELINES:
        raise ConfigError(f"--baseline must be one of {', '.join(BASELINES)}, got {kind!r}")
    cfg = load_config(config)
    identity = data_identity(cfg)
    folder = claim_output(
        out, "train", run_identity(cfg, seed, identity), TRAIN_FILES, force=force, resume=resume
    )
    data, val = load_data(cfg, seed)
    if kind == "unknown-as-negative" and data.task != "multilabel":
        raise ConfigError(
            "--baseline unknown-as-negative needs multilabel data (unknown (-1) labels to count "
            "as negatives); this data is multiclass"
        )
    early_warnings = validate_run(cfg, data, val)  # every check that needs the data
    for msg in early_warnings:
        warn(msg)
    dev = torch.device(device)
    steps_per_epoch = math.ceil(len(data.x_train) / cfg.train["batch_size"])
    run = RunId(cfg, seed, identity, steps_per_epoch)
    parts = build_parts(cfg, data, seed, dev)
    ckpt_path = folder / "checkpoint.pt"
    history = resume_run(ckpt_path, run, parts, dev, echo) if resume else History()
    if not resume:  # a fresh run never restores another run's best weights
        (folder / "best_model.pt").unlink(missing_ok=True)
    start_epoch = len(history.losses)
    runs: list[_Job] = [("configured", run, parts, history, ckpt_path)]
    if kind is not None:
        plain = replace(cfg, policies=[], rows=None, aggregation=None)
        uan = kind == "unknown-as-negative"
        runs.append(
            (
                "baseline",
                replace(run, cfg=plain),
                build_parts(plain, data, seed, dev, unknown_as_negative=uan),
                History(),
                None,
            )
        )
    total = sum(cfg.train["epochs"] - len(h.losses) for _, _, _, h, _ in runs) * steps_per_epoch
    bar = progress_bar(total, quiet=quiet, desc="labelgrad train", unit="step")
    t0 = time.perf_counter()
    bests: dict[str, Best] = {}
    try:
        for name, r, p, h, ck in runs:
            bests[name] = _train_epochs(name, r, p, data, val, dev, h, ck, bar)
    finally:
        bar.close()
    summary = _summary(cfg, seed, start_epoch, data, dev, runs, bests, time.perf_counter() - t0)
    if kind is not None:
        summary["baseline"]["kind"] = kind
    summary["warnings"] = validation_warnings(cfg, data, val) + summary["warnings"]
    for msg in summary["warnings"]:
        warn(msg)
    summary["warnings"][:0] = early_warnings  # shown before training; recorded with the rest
    if (folder / "best_model.pt").is_file():
        summary["files"] = ["checkpoint.pt", "best_model.pt", "metrics.json"]
    write_train_outputs(folder, cfg.file, data, parts.monitor, summary)
    record_output(folder, summary["files"])
    if echo is not None:
        _echo_summary(echo, summary, folder)
    return summary


def _summary(
    cfg: TrainConfig,
    seed: int,
    start_epoch: int,
    data: Dataset,
    dev: torch.device,
    runs: list[_Job],
    bests: dict[str, Best],
    seconds: float,
) -> dict[str, Any]:
    """metrics.json's content: the configured run at the top level, the baseline beside it."""
    out: dict[str, Any] = {
        "config": str(cfg.file),
        "seed": seed,
        "epochs": cfg.train["epochs"],
        "resumed_from_epoch": start_epoch,
        "val_metric_name": VAL_METRIC[data.task],
        "train_samples": len(data.x_train),
        "test_samples": len(data.x_test),
        "notes": _notes(cfg, data),
        "train_seconds": seconds,
    }
    warnings: list[str] = []
    for name, _, parts, history, _ in runs:
        metrics, per_class = _evaluate(parts.model, data, dev)
        result = {
            "epoch_loss": history.epoch_loss(),
            "step_losses": history.losses,
            **history.as_dict(),
            "epochs_trained": len(history.losses),
            "stopped_early": history.stopped_early,
            # With patience: the epoch whose weights the test uses (the best validation epoch).
            "best_epoch": bests[name].epoch or None,
            "restored_best_epoch": bests[name].restored,
            "test": metrics,
            "per_class": per_class,
        }
        if name == "configured":
            out.update(result)
            out["confusion"] = _confusion(parts.model, data, dev)
        else:
            out["baseline"] = result
        warnings += loss_warnings(name, history.epoch_loss())
        b = bests[name]
        if b.epoch and b.epoch != len(history.losses) and not b.restored:
            warnings.append(
                f"{name} run: the weights of the best validation epoch ({b.epoch}) were not "
                "available (best_model.pt missing or unreadable): the test uses the last epoch's"
            )
        if history.still_rising() and not history.stopped_early:
            v = [m for m in history.val_metric if not math.isnan(m)]
            warnings.append(
                f"{name} run: validation {VAL_METRIC[data.task]} was still rising at the last "
                f"epoch ({max(v[:-1]):.3f} -> {v[-1]:.3f}); more [train] epochs would likely help"
            )
    out["warnings"] = warnings
    return out


_Job = tuple[str, "RunId", "Parts", "History", "Path | None"]
"""One training job of run_train: (name, run identity, parts, history, checkpoint path)."""


def _notes(cfg: TrainConfig, data: Dataset) -> list[str]:
    notes = []
    rows = cfg.rows
    moving = rows is not None and (
        rows["frozen"] or rows["lr_scale"] is not None or rows["lr_scale_power"] is not None
    )
    if moving and any(p["name"] == "eqlv2" for p in cfg.policies):
        # Measured (docs/api/cli.md): eqlv2 alone and lr_scale_power alone converge, together
        # the rare rows' logits run away.
        notes.append(
            "eqlv2 with [rows] frozen / lr_scale can diverge: EQLv2 removes most of a rare "
            "class's negative gradient and boosts its positives, so only the other samples' "
            "gradients pull its logit down; a row that steps several times faster (lr_scale) "
            "or rows that cannot follow (frozen) leave nothing to hold the logits back. Watch "
            "the training loss (the run warns when it diverges)"
        )
    if any(p["name"] == "mask_unknown" for p in cfg.policies):
        notes.append(
            "[[policies]] mask_unknown changes nothing in `labelgrad train`: its loss already "
            "ignores unknown (-1) labels (mean BCE over the known entries); it matters where a "
            "loss treats -1 as a target"
        )
    if data.task == "multilabel" and bool((data.y_train < 0).any()):
        frac = float((data.y_train < 0).double().mean())
        notes.append(f"{frac:.0%} of the training labels are unknown (-1) and left out of the loss")
    return notes


def _confusion(model: MLP, data: Dataset, dev: torch.device) -> list[list[int]] | None:
    """Single-label: the test confusion matrix (rows: true class, columns: predicted)."""
    if data.task != "multiclass":
        return None
    with torch.no_grad():
        pred = model(data.x_test.to(dev)).argmax(dim=1).cpu()
    c = data.num_classes
    counts = torch.bincount(data.y_test * c + pred, minlength=c * c)
    return counts.reshape(c, c).tolist()


def _echo_summary(echo: Callable[[str], None], summary: dict[str, Any], folder: Path) -> None:
    def line(name: str, r: dict[str, Any]) -> str:
        # Percentages, as the report shows them.
        best = (
            f" (test on the weights of epoch {r['best_epoch']}, the best validation epoch)"
            if r["restored_best_epoch"]
            else ""
        )
        return (
            f"{name}: {r['epochs_trained']} epochs{best}, final loss {r['epoch_loss'][-1]:.4f}; "
            + ", ".join(
                f"{METRIC_LABELS.get(k, k).removesuffix(' %')} {100 * v:.1f} %"
                for k, v in r["test"].items()
            )
        )

    start = summary["resumed_from_epoch"]
    echo(line(f"trained (resumed after epoch {start})" if start else "trained", summary))
    if "baseline" in summary:
        kind = summary["baseline"].get("kind", "plain")
        echo(line(f"baseline ({BASELINE_LABELS[kind]}, same seed)", summary["baseline"]))
    for note in summary["notes"]:
        echo(f"note: {note}")
    echo(f"wrote {folder / 'report.html'}")


def _evaluate(model: MLP, data: Dataset, dev: torch.device) -> tuple[dict[str, float], list[float]]:
    """Test metrics (:mod:`labelgrad.app.metrics`) and the per-class recall / per-label F1."""
    with torch.no_grad():
        logits = model(data.x_test.to(dev)).cpu()
    if data.task == "multiclass":
        metrics, recall = multiclass_metrics(logits, data.y_test, data.num_classes)
        return metrics, recall.tolist()
    metrics, per_label = multilabel_metrics(torch.sigmoid(logits), data.y_test)
    return metrics, per_label.tolist()
