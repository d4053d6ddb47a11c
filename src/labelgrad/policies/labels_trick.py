"""The labels trick (Zeno et al., 2018): softmax cross-entropy over a subset of the classes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from labelgrad._validation import as_class_set
from labelgrad.policies._surrogate import (
    OUTSIDE,
    SurrogatePolicy,
    as_smoothing,
    compute_dtype,
    passthrough_non_finite,
    smoothed,
    softmax_scale,
)
from labelgrad.policies.policy import GradContext

__all__ = ["LabelsTrick", "labels_trick"]


class LabelsTrick(SurrogatePolicy):
    """Cross-entropy restricted to some classes. Built by :func:`labels_trick`.

    Buffer: ``classes``, the sorted int64 indices of the kept classes (empty: the classes present
    in each batch).
    """

    classes: Tensor

    def __init__(
        self,
        classes: Iterable[int] | Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
        check: bool | None = None,
    ) -> None:
        super().__init__(check)
        self.label_smoothing = as_smoothing(label_smoothing)
        self._num_classes: int | None = None
        if classes is None:
            idx = torch.zeros(0, dtype=torch.long)
        else:
            if isinstance(classes, Tensor) and classes.dtype == torch.bool:
                self._num_classes = classes.numel()
            idx = as_class_set(classes, "classes", num_classes=self._num_classes)
            if idx.numel() == 0:
                raise ValueError("classes must name at least one class (or be None)")
        self.from_batch = classes is None
        self._max_class = int(idx.max()) if idx.numel() else -1
        self.register_buffer("classes", idx)
        self.register_load_state_dict_post_hook(_refresh_max_class)

    def extra_repr(self) -> str:
        kept = "present in the batch" if self.from_batch else self.classes.tolist()
        extra = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"classes={kept}{extra}"

    def expected_num_classes(self) -> int | None:
        return self._num_classes

    def check_call(self, num_classes: int, device: torch.device) -> None:
        super().check_call(num_classes, device)
        if self._max_class >= num_classes:
            raise ValueError(
                f"labels_trick got class {self._max_class} in classes=, out of range for logits "
                f"with {num_classes} classes"
            )

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        t = ctx.require_targets(self)
        dt = compute_dtype(grad)
        g, z, y = grad.to(dt), ctx.require_logits(self).to(dt), t.values.to(dt)
        scale, code = softmax_scale(g, z, smoothed(y, self.label_smoothing), grad.dtype)
        c = z.shape[-1]
        if self.from_batch:
            labelled = (y != 0) & t.known
            keep = labelled.reshape(-1, c).any(0)
        else:
            keep = torch.zeros(c, dtype=torch.bool, device=z.device)
            keep = keep.index_fill(0, self.classes.to(z.device), True)
            outside = ((y != 0) & ~keep).any()
            code = torch.where(outside, torch.maximum(code, torch.full_like(code, OUTSIDE)), code)
        self.report(code)
        # A batch with no label keeps every class (its rows are all ignored: gradient 0).
        keep = keep | ~keep.any()
        total = y.sum(-1, keepdim=True)
        target = y
        if self.label_smoothing:
            # Smoothed over the kept classes, as F.cross_entropy on the restricted logits does.
            kept = keep.to(dt)
            share = total * kept * (self.label_smoothing / kept.sum())
            target = y * (1 - self.label_smoothing) + share
        p = torch.softmax(z.masked_fill(~keep, float("-inf")), dim=-1)
        return passthrough_non_finite(grad, scale * (p * total - target), per_row=True)


def _refresh_max_class(module: object, _: object) -> None:
    """After load_state_dict: the checked bound follows the loaded classes (read on load)."""
    assert isinstance(module, LabelsTrick)
    module._max_class = int(module.classes.max()) if module.classes.numel() else -1


def labels_trick(
    classes: Iterable[int] | Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    check: bool | None = None,
) -> LabelsTrick:
    """The labels trick (Zeno et al., "Task agnostic continual learning using online variational
    Bayes", 2018): softmax cross-entropy over a subset of the classes only.

    Replaces the gradient of the user's ``F.cross_entropy`` by the gradient of cross-entropy over
    the kept classes, the others' logits dropped (set to -inf): the kept classes compete only
    with each other, and the excluded ones get no gradient, so a class-incremental learner does
    not push down the classes of earlier tasks. By default the kept classes are those present in
    the batch (any nonzero known target, summed over every sample and position); pass
    ``classes`` to keep a fixed set instead (e.g. the current task's). Same scale as the incoming
    gradient (reduction, per-sample weights, loss scaling, DDP); ignored samples
    (``ignore_index``) keep a zero gradient; any (N, C, *) layout and ``class_dim``.

    This policy *replaces* the gradient: put it first in a chain (after row-wise weights at
    most), under ``F.cross_entropy``. Under ``F.cross_entropy(..., label_smoothing=eps)`` pass
    ``label_smoothing=eps`` too: the result is the gradient of the smoothed cross-entropy over
    the kept classes (the smoothing spread over them). A label outside a given ``classes`` is
    refused with a ValueError, as is any loss the policy cannot reproduce (see ``check``).

    Args:
        classes: the kept classes, as indices (ints or an integer tensor) or a (C,) bool mask;
            None (default) keeps the classes present in each batch.
        label_smoothing: the ``label_smoothing`` of the user's ``F.cross_entropy``. Default 0.
        check: verify that the incoming gradient is that of the plain (or label-smoothed)
            cross-entropy and that every label is kept: None (default) at once on the CPU and
            at the next call on an accelerator (no synchronisation), True at once everywhere,
            False never.

    Example:
        >>> import torch, torch.nn.functional as F, labelgrad as lg
        >>> z = torch.zeros(2, 4, requires_grad=True)
        >>> y = torch.tensor([0, 1])
        >>> F.cross_entropy(lg.labels_trick()(z, y), y).backward()
        >>> z.grad.tolist()  # softmax over classes {0, 1} only, / N
        [[-0.25, 0.25, 0.0, 0.0], [0.25, -0.25, 0.0, 0.0]]
    """
    return LabelsTrick(classes, label_smoothing=label_smoothing, check=check)
