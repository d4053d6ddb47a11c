"""The metrics of ``labelgrad demo``, the outcomes benchmark and ``labelgrad train``, defined once.

Written in torch rather than taken from scikit-learn so that the application's results need only
torch; ``tests/app/test_outcomes.py`` checks every function against its scikit-learn
counterpart. All functions run on CPU tensors after training (not on a hot path).

One definition each:

- balanced accuracy: the mean per-class recall over the classes present in the test set;
- few-shot accuracy: the mean accuracy of the classes with fewer than :data:`FEW_SHOT` training
  images (the OLTR split of Liu et al. 2019, the long-tail literature's convention; "the 3
  rarest classes" depends on the number of classes and hides how rare they are);
- multi-label F1: per label at probability > :data:`THRESHOLD`, unknown (-1) entries left out,
  0 where a label has neither a positive nor a prediction (scikit-learn's ``zero_division=0``);
  macro = the mean over labels, micro = pooled over labels;
- mAP: the macro mean of scikit-learn's average precision over the labels with a positive.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "FEW_SHOT",
    "MANY_SHOT",
    "THRESHOLD",
    "average_precision",
    "balanced_accuracy",
    "f1_scores",
    "mean_average_precision",
    "multiclass_metrics",
    "multilabel_metrics",
    "per_class_recall",
    "shot_group_accuracy",
]

MANY_SHOT = 100
"""Many-shot classes have more than this many training images (Liu et al., OLTR, 2019)."""

FEW_SHOT = 20
"""Few-shot classes have fewer than this many training images; the rest are medium-shot."""

THRESHOLD = 0.5
"""Multi-label predictions: a label is predicted where its sigmoid probability exceeds this."""


def per_class_recall(pred: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """Recall (per-class accuracy) of each class, float64 (C,); NaN for classes with no sample.

    Example:
        >>> per_class_recall(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2).tolist()
        [0.5, 1.0]
    """
    hits = torch.bincount(y[pred == y], minlength=num_classes).double()
    total = torch.bincount(y, minlength=num_classes).double()
    return torch.where(total > 0, hits / total.clamp(min=1), float("nan"))


def balanced_accuracy(pred: Tensor, y: Tensor, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``y`` (sklearn's balanced_accuracy).

    Example:
        >>> balanced_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
        0.75
    """
    return float(per_class_recall(pred, y, num_classes).nanmean())


def shot_group_accuracy(
    recall: Tensor, train_counts: Tensor, *, many: int = MANY_SHOT, few: int = FEW_SHOT
) -> dict[str, float]:
    """Mean per-class accuracy of the many-, medium- and few-shot classes (NaN for an empty group).

    Args:
        recall: (C,) per-class test accuracy.
        train_counts: (C,) training images per class.
        many: a class with more than ``many`` training images is many-shot.
        few: a class with fewer than ``few`` is few-shot; the others are medium-shot.

    Example:
        >>> r = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
        >>> shot_group_accuracy(r, torch.tensor([500, 50, 5]))
        {'many': 0.9, 'medium': 0.5, 'few': 0.1}
    """
    if recall.shape != train_counts.shape or recall.dim() != 1:
        raise ValueError(
            f"recall and train_counts must both be (C,), got {tuple(recall.shape)} and "
            f"{tuple(train_counts.shape)}"
        )
    groups = {
        "many": train_counts > many,
        "medium": (train_counts >= few) & (train_counts <= many),
        "few": train_counts < few,
    }
    r = recall.double()
    return {k: float(r[m].mean()) if bool(m.any()) else float("nan") for k, m in groups.items()}


def average_precision(scores: Tensor, y: Tensor) -> Tensor:
    """Average precision of each label (sklearn's ``average_precision_score(average=None)``).

    AP = sum over distinct score thresholds (descending) of (R_n - R_{n-1}) P_n, ties in score
    counted together, as scikit-learn does. NaN for a label without a positive sample.

    Args:
        scores: (N, C) scores (higher = more likely positive).
        y: (N, C) labels in {0, 1}.

    Returns:
        float64 (C,).

    Example:
        >>> average_precision(torch.tensor([[0.9], [0.8], [0.1]]), torch.tensor([[1], [0], [1]]))
        tensor([0.8333], dtype=torch.float64)
    """
    if scores.shape != y.shape or scores.dim() != 2:
        raise ValueError(
            f"scores and y must both be (N, C), got {tuple(scores.shape)} and {tuple(y.shape)}"
        )
    s = scores.double()
    t = (y == 1).double()
    order = s.argsort(dim=0, descending=True, stable=True)
    s_sorted, t_sorted = s.gather(0, order), t.gather(0, order)
    tp = t_sorted.cumsum(0)
    fp = (1 - t_sorted).cumsum(0)
    # Only the last position of each run of equal scores is a threshold.
    last = torch.ones_like(s_sorted, dtype=torch.bool)
    last[:-1] = s_sorted[:-1] != s_sorted[1:]
    positives = t.sum(0)
    precision = tp / (tp + fp)
    recall = tp / positives.clamp(min=1)
    # Recall increase at each threshold: the positives between this threshold and the previous.
    prev_recall = torch.zeros_like(recall)
    kept = torch.where(last, recall, torch.full_like(recall, float("nan")))
    # The recall at the previous threshold = the last kept recall above this row.
    filled = torch.nan_to_num(kept, nan=-1.0)
    running = torch.cummax(filled, dim=0).values.clamp(min=0)
    prev_recall[1:] = running[:-1]
    ap = torch.where(last, (recall - prev_recall) * precision, 0.0).sum(0)
    return torch.where(positives > 0, ap, float("nan"))


def mean_average_precision(scores: Tensor, y: Tensor) -> float:
    """Macro mAP over the labels with at least one positive sample.

    Example:
        >>> mean_average_precision(torch.tensor([[0.9, 0.2], [0.1, 0.8]]), torch.eye(2))
        1.0
    """
    return float(average_precision(scores, y).nanmean())


def f1_scores(pred: Tensor, y: Tensor) -> tuple[float, float, Tensor]:
    """Macro F1, micro F1 and per-label F1 of multi-label predictions (0 where undefined).

    Matches sklearn's ``f1_score(..., zero_division=0)`` with ``average="macro"``, ``"micro"``
    and ``None`` on the known entries: an unknown label (-1) counts neither as a positive nor
    as a false positive.

    Args:
        pred: (N, C) predictions in {0, 1}.
        y: (N, C) labels in {0, 1}, -1 = unknown.

    Example:
        >>> pred, y = torch.tensor([[1, 0], [1, 1]]), torch.tensor([[1, 0], [0, 1]])
        >>> macro, micro, per = f1_scores(pred, y)
        >>> round(macro, 4), round(micro, 4), per.tolist()
        (0.8333, 0.8, [0.6666666666666666, 1.0])
    """
    if pred.shape != y.shape or pred.dim() != 2:
        raise ValueError(
            f"pred and y must both be (N, C), got {tuple(pred.shape)} and {tuple(y.shape)}"
        )
    p, t = ((pred == 1) & (y >= 0)).double(), (y == 1).double()
    tp = (p * t).sum(0)
    denom = p.sum(0) + t.sum(0)
    per = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), 0.0)
    total = denom.sum()
    micro = float(2 * tp.sum() / total) if float(total) > 0 else 0.0
    return float(per.mean()), micro, per


def multiclass_metrics(
    logits: Tensor, y: Tensor, num_classes: int
) -> tuple[dict[str, float], Tensor]:
    """Accuracy and balanced accuracy of single-label ``logits``; and the per-class recall.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> m, recall = multiclass_metrics(logits, torch.tensor([0, 0]), 2)
        >>> m, recall.tolist()
        ({'accuracy': 0.5, 'balanced_accuracy': 0.5}, [0.5, nan])
    """
    pred = logits.argmax(dim=1)
    recall = per_class_recall(pred, y, num_classes)
    acc = float((pred == y).double().mean())
    return {"accuracy": acc, "balanced_accuracy": float(recall.nanmean())}, recall


def multilabel_metrics(scores: Tensor, y: Tensor) -> tuple[dict[str, float], Tensor]:
    """mAP, worst-label AP, macro F1 and micro F1 of multi-label probabilities; per-label F1.

    Args:
        scores: (N, C) sigmoid probabilities.
        y: (N, C) labels in {0, 1}, -1 = unknown (left out of every metric).

    Example:
        >>> s = torch.tensor([[0.9, 0.2], [0.3, 0.8], [0.6, 0.1]])
        >>> m, per = multilabel_metrics(s, torch.tensor([[1, 0], [0, 1], [-1, 0]]))
        >>> m["macro_f1"], m["map"], per.tolist()
        (1.0, 1.0, [1.0, 1.0])
    """
    if scores.shape != y.shape or scores.dim() != 2:
        raise ValueError(
            f"scores and y must both be (N, C), got {tuple(scores.shape)} and {tuple(y.shape)}"
        )
    # An unknown entry scored -inf ranks last, where it adds no recall: AP ignores it exactly.
    ap = average_precision(torch.where(y >= 0, scores.double(), float("-inf")), y)
    macro, micro, per = f1_scores((scores > THRESHOLD).long(), y)
    known = ap[~ap.isnan()]
    metrics = {
        "map": float(known.mean()) if len(known) else float("nan"),
        "worst_ap": float(known.min()) if len(known) else float("nan"),
        "macro_f1": macro,
        "micro_f1": micro,
    }
    return metrics, per
