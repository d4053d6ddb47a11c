"""PyTorch Lightning: a callback that puts labelgrad's hooks where Lightning runs them.

What goes where in a Lightning step (automatic optimisation)::

    on_train_batch_start        -> accumulation window opened (first micro-batch)
    training_step               -> policies gate the logits (apply_policy)
    zero_grad                   (first micro-batch of a window)
    backward (scaled under AMP) -> policies transform dL/dlogits; statistics set aside per window
    on_after_backward           -> row rules observe this micro-batch's targets
    scaler.unscale_             (16-mixed)
    on_before_optimizer_step    -> accumulation window committed (unscaled, before clipping)
    gradient clipping           (Trainer(gradient_clip_val=...))
    optimizer.step              -> RowRules acts in update space (skipped with the step on inf)

Row rules need nothing else: return ``lg.RowRules(...)`` (a ``torch.optim.Optimizer``) from
``configure_optimizers``; the callback feeds it the targets of every micro-batch, so that
``skip_absent`` sees the union of the accumulation window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "labelgrad.integrations.lightning needs Lightning: pip install 'labelgrad[lightning]'"
    ) from e

from labelgrad.accumulation import accumulation_window
from labelgrad.policies.policy import Policy
from labelgrad.rows.observer import LabelObserver
from labelgrad.targets import Encoding, TargetsLike

__all__ = ["LabelGradCallback", "aggregate_backward", "apply_policy", "default_targets"]


def default_targets(batch: Any) -> Any:
    """The targets of a ``(inputs, targets, ...)`` batch or of a dict with a ``labels`` key."""
    if isinstance(batch, dict):
        for key in ("labels", "targets", "y"):
            if key in batch:
                return batch[key]
        raise ValueError(
            "cannot find the targets in a dict batch: pass targets=lambda batch: ... to "
            f"LabelGradCallback (keys: {sorted(batch)})"
        )
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    raise ValueError(
        "cannot find the targets of the batch: pass targets=lambda batch: ... to LabelGradCallback"
    )


def _policies(module: Any) -> Iterator[Policy]:
    for m in module.modules():
        if isinstance(m, Policy):
            yield m


class LabelGradCallback(pl.Callback):
    """Run labelgrad's per-step bookkeeping at the right Lightning hooks.

    - At fit start, attaches the trainer's ``GradScaler`` (``precision="16-mixed"``) to every
      policy of the LightningModule, so that clipping thresholds and statistics see the unscaled
      gradient.
    - With ``accumulate_grad_batches=k``, opens an :func:`labelgrad.accumulation_window` on the
      first micro-batch and commits it in ``on_before_optimizer_step`` (after unscaling, before
      clipping): the k micro-batches update the statistics as one batch.
    - After every micro-batch's backward, calls ``observe(targets)`` on each optimizer that has it
      (``lg.RowRules``, ``lg.route``), so skip_absent uses the window's union of present classes.

    Args:
        targets: maps a batch to its targets; default: :func:`default_targets`.
        observe: feed targets to row-rule optimizers. Default True.
        class_dim: the class axis of the targets, for ``observe``.
        encoding: the targets' encoding where shape and dtype leave it open (e.g. integer
            (N, C) targets with C classes: ``"multi_hot"``), for ``observe``.
        accumulate: open accumulation windows for stateful policies. Default True.
        attach_scaler: attach the trainer's GradScaler to the policies. Default True.

    Example:
        >>> import labelgrad as lg
        >>> from labelgrad.integrations.lightning import LabelGradCallback
        >>> cb = LabelGradCallback(targets=lambda batch: batch["y"])
        >>> cb.targets({"y": 3})
        3
    """

    def __init__(
        self,
        *,
        targets: Callable[[Any], TargetsLike] | None = None,
        observe: bool = True,
        class_dim: int = 1,
        encoding: Encoding | None = None,
        accumulate: bool = True,
        attach_scaler: bool = True,
    ) -> None:
        super().__init__()
        if targets is not None and not callable(targets):
            raise TypeError(f"targets must be a callable batch -> targets, got {targets!r}")
        self.targets: Callable[[Any], Any] = targets or default_targets
        self.observe = observe
        self.class_dim = class_dim
        self.encoding = encoding
        self.accumulate = accumulate
        self.attach_scaler = attach_scaler
        self._window: AbstractContextManager[None] | None = None
        self._batch: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.attach_scaler:
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            for policy in _policies(pl_module):
                policy.attach_grad_scaler(scaler)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.accumulate and self._window is None:
            policies = list(_policies(pl_module))
            if policies:
                self._window = accumulation_window(*policies)
                self._window.__enter__()
        self._batch = batch

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After backward, not at batch start: Lightning zero_grads inside the closure, and
        # RowRules.zero_grad forgets the observed classes (a skipped AMP step must not leak).
        batch, self._batch = self._batch, None
        if not self.observe or batch is None:
            return
        optimizers = [o for o in trainer.optimizers if isinstance(o, LabelObserver)]
        if optimizers:
            targets = self.targets(batch)
            for opt in optimizers:
                opt.observe(targets, class_dim=self.class_dim, encoding=self.encoding)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self._close(commit=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(commit=True)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close(commit=False)

    def _close(self, *, commit: bool) -> None:
        window, self._window = self._window, None
        if window is None:
            return
        if commit:
            window.__exit__(None, None, None)
        else:
            err = RuntimeError("training stopped")
            window.__exit__(RuntimeError, err, None)


def apply_policy(
    module: pl.LightningModule,
    logits: Tensor,
    targets: TargetsLike,
    policy: Policy | None = None,
    *,
    class_dim: int = 1,
    log: bool = True,
) -> Tensor:
    """Gate ``logits`` with a policy inside ``training_step`` and log its monitors.

    Args:
        module: the LightningModule (its ``policy`` attribute is used when ``policy`` is None).
        logits: the model's logits.
        targets: the batch's targets in any encoding.
        policy: the policy; default ``module.policy``.
        class_dim: the class axis of ``logits``.
        log: log the mean per-class gradient norm of every ``lg.monitor`` in the policy (from
            the previous backward pass) as ``labelgrad/grad_norm``.

    Returns:
        ``logits`` unchanged, carrying the policy's gate (outside training, no gate).

    Example:
        >>> import torch, labelgrad as lg, lightning.pytorch as pl
        >>> from labelgrad.integrations.lightning import apply_policy
        >>> module = pl.LightningModule()
        >>> module.policy = lg.class_weights([1.0, 3.0])
        >>> z = torch.zeros(1, 2, requires_grad=True)
        >>> apply_policy(module, z, torch.tensor([1]), log=False).sum().backward()
        >>> z.grad.tolist()
        [[3.0, 3.0]]
    """
    if policy is None:
        policy = getattr(module, "policy", None)
        if not isinstance(policy, Policy):
            raise ValueError("pass policy=... or give the LightningModule a `policy` attribute")
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a labelgrad Policy, got {type(policy).__name__}")
    if log and module._trainer is not None:
        from labelgrad.policies.monitor import GradMonitor

        for i, m in enumerate(p for p in policy.modules() if isinstance(p, GradMonitor)):
            name = "labelgrad/grad_norm" + (f"_{i}" if i else "")
            module.log(name, m.last_norm.mean(), on_step=True, on_epoch=False)
    out: Tensor = policy(logits, targets, class_dim=class_dim)
    return out


def aggregate_backward(
    module: pl.LightningModule, losses: Tensor, *, aggregator: Any, **kwargs: Any
) -> Any:
    """``lg.aggregate_backward`` inside a manually optimised LightningModule.

    Use it in place of ``self.manual_backward(loss)`` (``self.automatic_optimization = False``):
    under a GradScaler (``16-mixed``) the losses are scaled as ``manual_backward`` would and an
    overflow propagates to the scaler (``nonfinite="propagate"``); under a multi-process strategy
    the aggregator is wrapped in :func:`labelgrad.integrations.distributed.synchronized`, so
    every rank computes its weights from the global Gramian.

    Args:
        module: the LightningModule (attached to a trainer).
        losses: (K,) label losses, e.g. from :func:`labelgrad.per_label_losses`.
        aggregator: an ``lg.aggregators`` aggregator.
        **kwargs: passed on to :func:`labelgrad.aggregate_backward` (``shared``, ``engine``,
            ``features``, ...).

    Returns:
        The :class:`labelgrad.aggregation.AggregationResult`.
    """
    from labelgrad._distributed import is_distributed
    from labelgrad.aggregation import aggregate_backward as _aggregate_backward
    from labelgrad.integrations.distributed import SynchronizedGramian, synchronized

    scaler = getattr(module.trainer.precision_plugin, "scaler", None)
    if scaler is not None:
        losses = scaler.scale(losses)
        kwargs.setdefault("nonfinite", "propagate")
    if is_distributed() and not isinstance(aggregator, SynchronizedGramian):
        aggregator = synchronized(aggregator)
    return _aggregate_backward(losses, aggregator=aggregator, **kwargs)
