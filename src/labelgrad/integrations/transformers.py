"""Hugging Face Trainer: a policy at the logits through ``compute_loss_func``, or a Trainer.

Two ways in, from the least to the most integrated:

- :func:`policy_loss` builds a ``compute_loss_func`` for ``transformers.Trainer``: it gates
  ``outputs.logits`` with the policy and computes the usual loss (cross-entropy for class-index
  labels, BCE for multi-label float labels, honouring ``num_items_in_batch``).
- :class:`LabelGradTrainer` does that and also attaches the GradScaler under fp16, opens an
  accumulation window per optimizer step (``gradient_accumulation_steps``), and optionally wraps
  the optimizer in row rules (``row_rules=lambda opt: lg.RowRules(opt, rows=...)``), feeding them
  the labels of every micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import transformers
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "labelgrad.integrations.transformers needs transformers: "
        "pip install 'labelgrad[transformers]'"
    ) from e

from labelgrad.accumulation import accumulation_window
from labelgrad.policies.policy import Policy
from labelgrad.rows.observer import LabelObserver
from labelgrad.targets import Encoding

__all__ = ["LabelGradTrainer", "policy_loss"]

LossName = Literal["auto", "ce", "bce"]


def _logits(outputs: Any) -> Tensor:
    logits = (
        outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    )
    if logits is None and isinstance(outputs, (tuple, list)):
        logits = outputs[0]
    if not isinstance(logits, Tensor):
        raise TypeError("the model's outputs have no `logits` tensor")
    return logits


def policy_loss(
    policy: Policy,
    *,
    loss: LossName = "auto",
    class_dim: int = -1,
    ignore_index: int = -100,
) -> Callable[..., Tensor]:
    """A ``compute_loss_func`` for ``transformers.Trainer`` that gates the logits with ``policy``.

    Args:
        policy: any labelgrad policy.
        loss: ``"ce"`` (class indices, as ``*ForSequenceClassification`` and
            ``*ForTokenClassification``), ``"bce"`` (multi-hot float labels, -1 = unknown, as
            ``problem_type="multi_label_classification"``), or ``"auto"``: ``"ce"`` for integer
            labels, ``"bce"`` for floating labels.
        class_dim: the class axis of the logits; -1 (Hugging Face's layout) by default.
        ignore_index: the "no label" index of class-index labels.

    Returns:
        ``f(outputs, labels, num_items_in_batch=None) -> loss``: a sum over labelled entries
        divided by ``num_items_in_batch`` when the Trainer passes it (exact under gradient
        accumulation), else their mean.

    Example:
        >>> import torch, labelgrad as lg
        >>> from labelgrad.integrations.transformers import policy_loss
        >>> f = policy_loss(lg.class_weights([1.0, 2.0]))
        >>> logits = torch.zeros(2, 2, requires_grad=True)
        >>> f({"logits": logits}, torch.tensor([0, 1])).backward()
        >>> logits.grad.tolist()   # sample 1 (class 1, weight 2) counts twice
        [[-0.25, 0.25], [0.5, -0.5]]
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a labelgrad Policy, got {type(policy).__name__}")
    if loss not in ("auto", "ce", "bce"):
        raise ValueError(f"loss must be 'auto', 'ce' or 'bce', got {loss!r}")

    def compute_loss(
        outputs: Any, labels: Tensor, num_items_in_batch: Tensor | int | None = None
    ) -> Tensor:
        logits = _logits(outputs)
        kind = loss
        if kind == "auto":
            kind = "bce" if labels.is_floating_point() else "ce"
        policy.to(logits.device)  # the policy's statistics follow the model (no-op once there)
        gated = policy(logits, labels, class_dim=class_dim, ignore_index=ignore_index)
        if kind == "ce":
            per = F.cross_entropy(
                gated.movedim(class_dim, 1).float(),
                labels.long(),
                ignore_index=ignore_index,
                reduction="sum",
            )
            count: Tensor | int = (labels != ignore_index).sum()
        else:
            known = (labels >= 0).to(torch.float32)
            per = F.binary_cross_entropy_with_logits(
                gated.float(), labels.clamp(min=0).float(), weight=known, reduction="sum"
            )
            count = known.sum()
        if num_items_in_batch is not None:
            count = num_items_in_batch
        if isinstance(count, Tensor):
            return per / count.to(per.device).clamp(min=1)
        return per / max(count, 1)

    return compute_loss


class _StepWindows(transformers.TrainerCallback):
    """Opens an accumulation window at each step's first micro-batch; commits it at step end."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.window: AbstractContextManager[None] | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()
        self.window = accumulation_window(self.policy)
        self.window.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        window, self.window = self.window, None
        if window is not None:
            window.__exit__(None, None, None)


class LabelGradTrainer(transformers.Trainer):
    """``transformers.Trainer`` with a labelgrad policy at the logits and optional row rules.

    Args:
        *args: as for ``transformers.Trainer``.
        policy: the policy applied to ``outputs.logits`` (see :func:`policy_loss`).
        loss: ``"auto"``, ``"ce"`` or ``"bce"`` (see :func:`policy_loss`).
        class_dim: the class axis of the logits (default -1).
        row_rules: optional ``optimizer -> optimizer`` wrapper, e.g.
            ``lambda opt: lg.RowRules(opt, rows=model.classifier, skip_absent=True)``; every
            micro-batch's labels are passed to its ``observe``.
        encoding: the labels' encoding where dtype and shape leave it open, for ``observe``.
        **kwargs: as for ``transformers.Trainer``.

    The policy's statistics are not part of the model's ``state_dict``: save
    ``policy.state_dict()`` next to the checkpoint, or register the policy on the model.

    Example:
        >>> import labelgrad as lg
        >>> from labelgrad.integrations.transformers import LabelGradTrainer
        >>> LabelGradTrainer.__mro__[1].__name__
        'Trainer'
    """

    def __init__(
        self,
        *args: Any,
        policy: Policy,
        loss: LossName = "auto",
        class_dim: int = -1,
        row_rules: Callable[[torch.optim.Optimizer], torch.optim.Optimizer] | None = None,
        encoding: Encoding | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("LabelGradTrainer computes the loss itself: drop compute_loss_func")
        if row_rules is not None and not callable(row_rules):
            raise TypeError(
                f"row_rules must be a callable optimizer -> optimizer, got {row_rules!r}"
            )
        kwargs["compute_loss_func"] = policy_loss(policy, loss=loss, class_dim=class_dim)
        super().__init__(*args, **kwargs)
        self.policy = policy
        self.row_rules = row_rules
        self.encoding = encoding
        # Labels are (N, C) multi-hot or (N,)/(N, T) indices: the class axis of multi-hot is last.
        self.observe_class_dim = class_dim
        self._windows = _StepWindows(policy)
        self.add_callback(self._windows)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        optimizer: torch.optim.Optimizer = super().create_optimizer(model)
        if self.row_rules is not None and not isinstance(optimizer, LabelObserver):
            optimizer = self.row_rules(optimizer)
            self.optimizer = optimizer
        return optimizer

    def training_step(
        self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Tensor:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.policy._grad_scaler is not scaler:
            self.policy.attach_grad_scaler(scaler)
        optimizer: Any = getattr(self.optimizer, "optimizer", self.optimizer)  # under accelerate
        labels = inputs.get("labels") if isinstance(optimizer, LabelObserver) else None
        loss: Tensor = super().training_step(model, inputs, *args, **kwargs)
        if labels is not None:
            # After backward, as in the Lightning callback: zero_grad forgets observed classes.
            optimizer.observe(labels, class_dim=self.observe_class_dim, encoding=self.encoding)
        return loss
