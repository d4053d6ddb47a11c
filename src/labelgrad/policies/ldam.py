"""LDAM-DRW (Cao et al., NeurIPS 2019) as a surrogate gradient at the logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from labelgrad._validation import as_class_vector, as_count, as_nonnegative_scalar
from labelgrad.policies._surrogate import (
    SurrogatePolicy,
    as_smoothing,
    compute_dtype,
    passthrough_non_finite,
    smoothed,
    softmax_scale,
)
from labelgrad.policies.chain import Chain
from labelgrad.policies.policy import GradContext
from labelgrad.policies.schedule import schedule
from labelgrad.policies.weighting import class_weights

__all__ = ["LDAM", "ldam_drw"]


class LDAM(SurrogatePolicy):
    """The gradient of the label-distribution-aware margin loss. Built by :func:`ldam_drw`.

    Buffer: ``counts`` (C,), in the floating dtype given (a float64 tensor stays float64;
    integers and sequences take torch's default dtype); the margins are computed from it in at
    least the gradient's precision.
    """

    counts: Tensor

    def __init__(
        self,
        counts: Tensor | Sequence[float],
        max_margin: float,
        s: float,
        *,
        label_smoothing: float = 0.0,
        check: bool | None = None,
    ) -> None:
        super().__init__(check)
        n = as_class_vector(counts, "counts", keep_dtype=True)
        if not bool((n > 0).all()):
            raise ValueError("counts must be positive for every class")
        self.max_margin = as_nonnegative_scalar(max_margin, "max_margin")
        self.s = as_nonnegative_scalar(s, "s", positive=True)
        self.label_smoothing = as_smoothing(label_smoothing)
        self.register_buffer("counts", n)

    def extra_repr(self) -> str:
        extra = f", label_smoothing={self.label_smoothing}" if self.label_smoothing else ""
        return f"num_classes={self.counts.numel()}, max_margin={self.max_margin}, s={self.s}{extra}"

    def expected_num_classes(self) -> int | None:
        return int(self.counts.numel())

    def margins(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The (C,) margins Delta_j = max_margin (n_j / min n)^(-1/4), in ``dtype``."""
        # In the counts' precision at least: the ratio of 1e-50 and 1 underflows in float32.
        n = self.counts.to(torch.promote_types(self.counts.dtype, dtype))
        m = n / n.min()
        m = m**-0.25
        return (m * self.max_margin).to(dtype)

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        t = ctx.require_targets(self)
        dt = compute_dtype(grad)
        g, z, y = grad.to(dt), ctx.require_logits(self).to(dt), t.values.to(dt)
        q = smoothed(y, self.label_smoothing)
        scale, code = softmax_scale(g, z, q, grad.dtype)
        self.report(code)
        margins = self.margins(dt).to(z.device)
        # The margin follows the label (y), the cross-entropy the (smoothed) target (q).
        shifted = self.s * (z - y * margins)
        surrogate = self.s * (torch.softmax(shifted, dim=-1) * q.sum(-1, keepdim=True) - q)
        return passthrough_non_finite(grad, scale * surrogate, per_row=True)


def drw_weights(counts: Tensor, beta: float) -> Tensor:
    """Class-balanced weights (1 - beta) / (1 - beta^n_j), normalised to sum to C (Cui et al.).

    Computed in float64, returned in ``counts``' floating dtype.
    """
    n = counts.double()
    # 1 - beta^n as -expm1(n log beta): exact for tiny n, where 1 - beta^n rounds to 0.
    log_beta = torch.log(torch.tensor(beta, dtype=torch.float64))
    w = (1 - beta) / -torch.expm1(n * log_beta)
    return (w * (n.numel() / w.sum())).to(counts.dtype)


def ldam_drw(
    counts: Tensor | Sequence[float],
    max_margin: float = 0.5,
    s: float = 30.0,
    *,
    drw_start: int | None = None,
    beta: float = 0.9999,
    label_smoothing: float = 0.0,
    check: bool | None = None,
) -> Chain:
    """LDAM with deferred re-weighting (Cao et al., "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019).

    LDAM replaces the gradient of the user's softmax cross-entropy on logits z by the gradient of
    cross-entropy on s (z - Delta_y e_y): the true class must win by a margin
    Delta_j proportional to n_j^(-1/4), the largest being ``max_margin``. The paper applies it to
    a cosine (normalised) classifier, whose logits lie in [-1, 1]; ``s`` is its scale. Same scale
    as the incoming gradient (reduction, loss scaling, DDP). LDAM *replaces* the gradient. With
    soft (or multi-hot) targets q the margin is q_j Delta_j on every class j (the published loss
    for one-hot q): the gradient of ``F.cross_entropy(s * (z - q * Delta), q)``. Under
    ``F.cross_entropy(..., label_smoothing=eps)`` pass ``label_smoothing=eps`` too: the margin
    still follows the label, the cross-entropy takes the smoothed target. Any other loss is
    refused with a ValueError (see ``check``).

    DRW (from backward pass ``drw_start`` on) multiplies each sample's gradient by the
    class-balanced weight of its class, (1 - beta) / (1 - beta^n_y) normalised to sum to C: a
    *reweighting*, the gradient of ``CrossEntropyLoss(weight=w, reduction="sum")`` as in
    :func:`~labelgrad.class_weights`; under ``reduction="mean"`` PyTorch would also divide by the
    summed weights of the batch, a per-batch constant not reintroduced here. ``drw_start`` counts
    backward passes (steps), not epochs: use steps_per_epoch x the paper's epoch 160.

    Args:
        counts: (C,) positive training counts per class.
        max_margin: the largest margin (that of the rarest class). Default 0.5.
        s: the logit scale of the margin loss. Default 30.
        drw_start: the step from which the class-balanced weights apply; None for LDAM alone.
        beta: the class-balanced weights' beta. Default 0.9999.
        label_smoothing: the ``label_smoothing`` of the user's ``F.cross_entropy``. Default 0.
        check: verify that the incoming gradient is that of the plain (or label-smoothed)
            cross-entropy: None (default) at once on the CPU and at the next call on an
            accelerator, True at once everywhere, False never.

    Returns:
        ``chain(LDAM, schedule(class_weights(w), start_step=drw_start))`` (the schedule only
        with ``drw_start``).

    Example:
        >>> import torch, torch.nn.functional as F, labelgrad as lg
        >>> policy = lg.ldam_drw([100, 10], max_margin=0.5, s=1.0)
        >>> z = torch.zeros(1, 2, requires_grad=True)
        >>> y = torch.tensor([1])
        >>> F.cross_entropy(policy(z, y), y).backward()
        >>> [round(v, 4) for v in z.grad[0].tolist()]  # class 1 must win by 0.5
        [0.6225, -0.6225]
    """
    ldam = LDAM(counts, max_margin, s, label_smoothing=label_smoothing, check=check)
    if drw_start is None:
        return Chain(ldam)
    as_count(drw_start, "drw_start", minimum=0)
    b = as_nonnegative_scalar(beta, "beta")
    if not b < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    w = class_weights(drw_weights(ldam.counts, b))
    return Chain(ldam, schedule(w, start_step=drw_start))
