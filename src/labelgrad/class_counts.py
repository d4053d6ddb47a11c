"""Per-class statistics a long-tail recipe derives from training counts.

The policies take what these return: :func:`effective_number_weights` feeds
:func:`~labelgrad.class_weights` (or a deferred re-weighting schedule), :func:`class_priors`
feeds :func:`~labelgrad.logit_adjust`. Both work on a (C,) vector of counts, which may be
fractional (e.g. summed soft labels); they run once, when the recipe is built, not per step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["class_priors", "effective_number_weights"]


def _counts(counts: Tensor | Sequence[float], *, need_positive: bool = True) -> Tensor:
    """``counts`` as a 1-D float tensor (float64 kept, integers to the default dtype), checked."""
    t = torch.as_tensor(counts)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D (C,) vector, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"counts must be real numbers, got {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    bad = ~torch.isfinite(t) | (t < 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"counts must be finite and >= 0, got counts[{i}] = {t[i].item()}")
    if need_positive and not bool((t > 0).any()):
        raise ValueError("counts must have at least one positive entry")
    return t


def effective_number_weights(counts: Tensor | Sequence[float], beta: float = 0.9999) -> Tensor:
    """Class-balanced weights from the effective number of samples (Cui et al., CVPR 2019).

    Class c with n_c samples gets w_c proportional to (1 - beta) / (1 - beta^n_c), the inverse of
    its effective number of samples; the weights are scaled to mean 1 over the classes that have
    samples. beta = 0 gives equal weights; as beta approaches 1 they approach inverse frequency
    (with n_c <= a few hundred, beta = 0.9999 already is inverse frequency within a few per
    cent: pick beta so that 1 / (1 - beta) is comparable to the head class's count).

    Args:
        counts: (C,) non-negative training counts per class (fractional counts allowed). A class
            with count 0 gets weight 0 (it has no sample to weight).
        beta: in [0, 1). Default 0.9999, the paper's (and :func:`~labelgrad.ldam_drw`'s) value.

    Returns:
        (C,) weights: float64 for float64 counts, the counts' dtype for other float counts, the
        default dtype for integer counts; on the counts' device.

    Raises:
        ValueError: counts not a non-empty 1-D vector, negative, NaN or infinite, or all zero;
            beta outside [0, 1).

    Example:
        >>> import labelgrad as lg
        >>> w = lg.effective_number_weights([100, 10, 1], beta=0.99)
        >>> [round(v, 3) for v in w.tolist()]  # mean 1; the rare class weighs most
        [0.042, 0.28, 2.678]
        >>> lg.effective_number_weights([5, 0], beta=0.9).tolist()  # an empty class: weight 0
        [1.0, 0.0]
    """
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    n = _counts(counts)
    # In float64 whatever the counts' dtype: 1 - beta^n loses every digit in float32 when
    # beta^n is within 1e-7 of 1 (beta = 0.9999, n = 1).
    n64 = n.double()
    present = n64 > 0
    # -expm1(n log beta) = 1 - beta^n without cancellation; beta = 0: 1 for every present class.
    denom = -torch.expm1(n64 * math.log(beta)) if beta > 0 else torch.ones_like(n64)
    w = torch.where(present, (1 - beta) / torch.where(present, denom, 1.0), 0.0)
    w = w * (present.sum() / w.sum())
    return w.to(n.dtype)


def class_priors(counts: Tensor | Sequence[float], *, min_count: float = 0.0) -> Tensor:
    """Class priors (frequencies) from training counts: max(n_c, min_count) / sum.

    :func:`~labelgrad.logit_adjust` needs positive priors (it adds tau log prior to the logits):
    give ``min_count=1`` when a class may have no training sample, so that it counts as one.

    Args:
        counts: (C,) non-negative training counts per class (fractional counts allowed).
        min_count: counts below it are raised to it before normalising. Default 0.

    Returns:
        (C,) priors summing to 1, in the dtype rules of :func:`effective_number_weights`.

    Raises:
        ValueError: counts not a non-empty 1-D vector, negative, NaN or infinite, or all zero
            (with ``min_count`` 0); min_count negative or not finite.

    Example:
        >>> import torch, labelgrad as lg
        >>> [round(p, 3) for p in lg.class_priors([6, 3, 1]).tolist()]
        [0.6, 0.3, 0.1]
        >>> lg.class_priors(torch.tensor([9, 0], dtype=torch.float64), min_count=1).tolist()
        [0.9, 0.1]
    """
    if not (isinstance(min_count, (int, float)) and math.isfinite(min_count) and min_count >= 0):
        raise ValueError(f"min_count must be a finite number >= 0, got {min_count!r}")
    n = _counts(counts, need_positive=min_count == 0).clamp(min=min_count)
    # The sum in float64: a float32 sum of many large counts drifts from the exact total.
    return (n.double() / n.double().sum()).to(n.dtype)
