"""Post-hoc operations on the weight rows of a trained classifier head.

Two rescalings of class rows from the literature, applied once after training:

- :func:`tau_normalize` (Kang et al. 2020, "Decoupling representation and classifier for
  long-tailed recognition"): row ``c`` divided by ``||w_c||^tau``;
- :func:`align_weights` (Zhao et al. 2020, "Maintaining discrimination and fairness in class
  incremental learning", weight aligning): the rows of the new classes scaled by the mean norm
  of the old rows over the mean norm of the new rows.

Both act on the weight rows only and leave the bias as it is (the authors' classifiers have no
bias, or leave it out of the rescaling). Each takes an ``nn.Linear`` or a weight tensor whose
axis 0 is the class axis (a class's row is everything along the other axes) and returns the
same kind: a new one, or the given one changed in place with ``inplace=True``. The rescaling is
computed in float64 and rounded once to the weight's dtype, so rows whose factor is 1 keep
their bits.
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
from torch import Tensor, nn

from labelgrad._validation import as_class_set
from labelgrad.rows.max_norm import row_norms

__all__ = ["align_weights", "tau_normalize"]

HeadT = TypeVar("HeadT", nn.Linear, Tensor)


def _weight_of(head: object, fn: str) -> Tensor:
    """The (C, ...) weight of ``head``; raise naming the argument otherwise."""
    if isinstance(head, nn.Linear):
        weight = head.weight
    elif isinstance(head, Tensor):
        weight = head
    else:
        raise TypeError(
            f"{fn}: head must be an nn.Linear or a weight tensor with the class axis at dim 0, "
            f"got {type(head).__name__}"
        )
    if not weight.is_floating_point():
        raise TypeError(f"{fn}: the weight must be floating point, got dtype {weight.dtype}")
    if weight.dim() < 2:
        raise ValueError(
            f"{fn}: the weight must have a class axis and a row axis (shape (C, D, ...)), got "
            f"shape {tuple(weight.shape)}; a bias is not rescaled"
        )
    return weight


def _apply(head: HeadT, factor: Tensor, inplace: bool, fn: str, *, divide: bool = False) -> HeadT:
    """``head``'s weight rows times (or, with ``divide``, over) the (C,) wide-dtype ``factor``,
    rounded once; in place or on a copy of ``head``."""
    weight = _weight_of(head, fn)
    w = weight.detach()
    f = factor.reshape([-1] + [1] * (w.dim() - 1))
    wide = w.to(factor.dtype)
    new = (wide / f if divide else wide * f).to(w.dtype)
    if inplace:
        with torch.no_grad():
            weight.copy_(new)
        return head
    if isinstance(head, nn.Linear):
        out = copy.deepcopy(head)
        with torch.no_grad():
            out.weight.copy_(new)
        return out
    return new


def tau_normalize(head: HeadT, tau: float = 1.0, *, inplace: bool = False) -> HeadT:
    """Divide each class's weight row by its L2 norm to the power ``tau`` (tau-normalisation).

    Kang et al. 2020, "Decoupling representation and classifier for long-tailed recognition":
    ``w_c / ||w_c||^tau``; ``tau=1`` gives every row unit norm, ``tau=0`` changes nothing
    (bitwise), values in between (the paper picks ``tau`` on a validation set) shrink the
    spread of the norms that long-tailed training leaves. A zero row stays zero; a row with a
    NaN or inf entry gets what the formula gives (NaN entries). The bias is left as it is; the
    paper's classifier has none (zero it for the same logits).

    Args:
        head: an ``nn.Linear`` or a weight tensor of shape (C, D, ...).
        tau: the finite non-negative exponent.
        inplace: change ``head``'s weight in place and return ``head``; otherwise return a new
            Linear (a copy) or a new tensor and leave ``head`` untouched.

    Returns:
        The head (or weight) with rescaled rows, of the kind given.

    Raises:
        TypeError: ``head`` is neither a Linear nor a floating weight tensor.
        ValueError: ``tau`` is negative, NaN or infinite, or the weight has fewer than two
            dimensions.

    Example:
        >>> import torch, labelgrad as lg
        >>> w = torch.tensor([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
        >>> lg.rows.tau_normalize(w, tau=1.0).tolist()
        [[0.6, 0.8], [0.0, 1.0], [0.0, 0.0]]
        >>> lg.rows.tau_normalize(w, tau=0.5).norm(dim=1).tolist()  # norms 5, 2 -> sqrt(5), sqrt(2)
        [2.23606797749979, 1.4142135623730951, 0.0]
        >>> torch.equal(lg.rows.tau_normalize(w, tau=0.0), w)
        True
        >>> head = torch.nn.Linear(2, 3)
        >>> normed = lg.rows.tau_normalize(head)  # a new Linear; head is unchanged
        >>> torch.allclose(normed.weight.norm(dim=1), torch.ones(3)), normed is head
        (True, False)
    """
    weight = _weight_of(head, "tau_normalize")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau_normalize: tau must be a number, got {type(tau).__name__}")
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau_normalize: tau must be finite and non-negative, got {tau!r}")
    norm = row_norms(weight, 0)
    # 0 ** tau is 0 for tau > 0: a zero row has no direction to keep, it stays zero. A NaN or
    # inf norm goes through, as in the formula.
    divisor = torch.where(norm == 0, torch.ones_like(norm), norm.pow(float(tau)))
    return _apply(head, divisor, inplace, "tau_normalize", divide=True)


def align_weights(
    head: HeadT,
    new_classes: object,
    old_classes: object = None,
    *,
    inplace: bool = False,
) -> HeadT:
    """Scale the rows of the new classes so that their mean norm equals the old rows' (WA).

    Zhao et al. 2020, "Maintaining discrimination and fairness in class incremental learning":
    after a task of class-incremental training, the new classes' weight rows are multiplied by
    ``gamma = mean_{c old} ||w_c|| / mean_{c new} ||w_c||``. Every other row, and the bias,
    keep their bits. New rows that are all zero stay zero (gamma is then taken as 1).

    Args:
        head: an ``nn.Linear`` or a weight tensor of shape (C, D, ...).
        new_classes: the classes of the latest task (indices or a (C,) bool mask).
        old_classes: the classes learned before it; every class not in ``new_classes`` when
            omitted.
        inplace: change ``head``'s weight in place and return ``head``; otherwise return a new
            Linear (a copy) or a new tensor and leave ``head`` untouched.

    Returns:
        The head (or weight) with the new rows rescaled, of the kind given.

    Raises:
        TypeError: ``head`` is neither a Linear nor a floating weight tensor, or a class set
            is not a set of indices.
        ValueError: a class set is empty, out of range, or the two sets overlap.

    Example:
        >>> import torch, labelgrad as lg
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [4.0, 0.0], [0.0, 2.0]])
        >>> lg.rows.align_weights(w, new_classes=[2, 3]).tolist()  # gamma = 1 / 3
        [[1.0, 0.0], [0.0, 1.0], [1.3333333730697632, 0.0], [0.0, 0.6666666865348816]]
        >>> head = torch.nn.Linear(2, 4)
        >>> lg.rows.align_weights(head, new_classes=[3], inplace=True) is head
        True
    """
    weight = _weight_of(head, "align_weights")
    c = weight.shape[0]
    new = as_class_set(new_classes, "align_weights: new_classes", num_classes=c)
    if new.numel() == 0:
        raise ValueError("align_weights: new_classes is empty")
    is_new = torch.zeros(c, dtype=torch.bool)
    is_new[new] = True
    if old_classes is None:
        is_old = ~is_new
    else:
        old = as_class_set(old_classes, "align_weights: old_classes", num_classes=c)
        is_old = torch.zeros(c, dtype=torch.bool)
        is_old[old] = True
        both = (is_old & is_new).nonzero().flatten().tolist()
        if both:
            raise ValueError(f"align_weights: classes {both} are both old and new")
    if not bool(is_old.any()):
        raise ValueError("align_weights: there are no old classes to align the new ones to")
    norm = row_norms(weight, 0)
    is_new, is_old = is_new.to(norm.device), is_old.to(norm.device)
    mean_new = norm[is_new].mean()
    mean_old = norm[is_old].mean()
    gamma = torch.where(mean_new == 0, torch.ones_like(mean_new), mean_old / mean_new)
    factor = torch.where(is_new, gamma, torch.ones_like(norm))
    return _apply(head, factor, inplace, "align_weights")
