"""Shared by the surrogate-gradient policies: read and check the loss's scale.

A surrogate policy replaces dL/dlogits by the gradient of another (published) loss. To give that
gradient the user's reduction ("mean" over the batch, "sum", per-sample weights, a GradScaler's
loss scale, DDP), it reads the factor between the incoming gradient and the gradient of the plain
loss the user is assumed to have written (cross-entropy, optionally label-smoothed, or binary
cross-entropy on the logits), per row or per entry, and multiplies the published loss's gradient
by the same factor.

That is exact only if the incoming gradient *is* that plain loss's gradient times the factor. So
the fit is checked: every finite row must equal s (softmax(z) sum(q) - q) up to float rounding
(for BCE: every entry has the sign of sigmoid(z) - y, and is 0 where that is 0). A loss the
policy cannot reproduce (``label_smoothing`` it was not told about, ``weight=`` with soft
targets, a temperature, a second loss term on the same logits) is refused with a ValueError,
never turned into a different gradient. The check is a few vectorised (N, S, C) operations and
one 0-d result; reading it on the host costs nothing on the CPU; on an accelerator it would stall
the step, so there it is copied to pinned host memory without waiting and raised by the next call
of the policy (see :class:`SurrogatePolicy`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from labelgrad._validation import as_nonnegative_scalar
from labelgrad.policies.policy import Policy
from labelgrad.targets import _tracing

__all__ = [
    "SurrogatePolicy",
    "compute_dtype",
    "passthrough_non_finite",
    "sigmoid_scale",
    "smoothed",
    "softmax_scale",
]

# The check's codes (0: the incoming gradient is the plain loss's).
NOT_PLAIN, NO_SCALE, OUTSIDE, NOT_HARD = 1, 2, 3, 4

# Relative tolerance of the fit (L1 over a row), by the dtype of the incoming gradient: far above
# the rounding of the two softmax computations (PyTorch's and ours; 3e-6 at most measured for a
# float32 loss on float64 logits, C up to 1e5), far below what label smoothing, a temperature or
# a second loss term change.
_RTOL = {torch.float64: 1e-4, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def compute_dtype(grad: Tensor) -> torch.dtype:
    """float64 for float64 gradients, float32 otherwise (half-precision gradients under AMP)."""
    return torch.float64 if grad.dtype == torch.float64 else torch.float32


def as_smoothing(value: object) -> float:
    """``label_smoothing`` as a float in [0, 1], or raise naming it."""
    eps = as_nonnegative_scalar(value, "label_smoothing")
    if eps > 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {value!r}")
    return eps


def smoothed(q: Tensor, eps: float) -> Tensor:
    """The target ``F.cross_entropy(..., label_smoothing=eps)`` uses: (1 - eps) q + eps sum(q)/C.

    ``sum(q)`` is 1 for a labelled row and 0 for an ignored one, which stays 0.
    """
    if eps == 0:
        return q
    return q * (1 - eps) + q.sum(-1, keepdim=True) * (eps / q.shape[-1])


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    # 0 where the denominator is 0: the incoming gradient is then 0 as well (an ignored sample, a
    # masked entry, or a prediction so confident that its gradient underflowed).
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def softmax_scale(
    grad: Tensor, logits: Tensor, q: Tensor, precision: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The (N, S, 1) factor s with grad = s (softmax(z) sum(q) - q), and the check's 0-d code.

    ``q`` is the target the user's cross-entropy used (already label-smoothed where it was);
    ``precision`` the dtype the incoming gradient came in (it sets the tolerances). Where the row
    has entries with target 0, s is read from them, where both sides are computed to full
    relative precision (sum_c g_c / sum_c p_c sum(q)); elsewhere (soft targets everywhere
    positive) from the least-squares fit <g, r> / <r, r>, whose relative error is about
    eps / |r|. A row whose prediction is so close to its soft target that this error would
    exceed sqrt(eps) takes the scale that every other row shares (a "mean" or "sum" reduction),
    read from the best-conditioned row; without one shared scale the code is NO_SCALE. A finite
    row that differs from s r by more than the tolerance gives NOT_PLAIN.
    """
    rtol = _RTOL.get(precision, 1e-4)
    eps = torch.finfo(precision).eps
    total = q.sum(-1, keepdim=True)
    pt = torch.softmax(logits, dim=-1) * total
    r = pt - q
    free = q == 0
    zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
    s_free = _ratio(torch.where(free, grad, zero).sum(-1), torch.where(free, r, zero).sum(-1))
    s_fit = _ratio((grad * r).sum(-1), (r * r).sum(-1))
    has_free = free.any(-1)
    s = torch.where(has_free, s_free, s_fit)
    size = (pt + q.abs()).sum(-1)  # the scale of r: 2 for a labelled row
    labelled = total.squeeze(-1) != 0
    finite = torch.isfinite(grad).all(-1)
    # How well r fixes s: 1 where the row has free entries, |r|_1 / size otherwise.
    cond = torch.where(has_free, torch.ones_like(size), _ratio(r.abs().sum(-1), size))
    # One class: softmax is 1 whatever the logits, so the plain gradient and every surrogate's
    # vanish; s = 0 (from the fit) is then exact, and the residual still checks the gradient.
    unsure = labelled & (cond < eps**0.5) & finite & (q.shape[-1] > 1)
    sure = labelled & ~unsure & finite
    # The scale the sure rows share, read from the best-conditioned one, for the unsure rows.
    if s.numel():  # gather, not indexing: a 0-d tensor index would read it on the host
        best = torch.where(sure, cond, -1).reshape(-1).argmax().reshape(1)
        s0 = s.reshape(-1).gather(0, best).reshape(())
    else:
        s0 = zero
    spread = (s - s0).abs() <= (rtol + 4 * eps / cond.clamp(min=eps)) * s0.abs()
    agree = sure.any() & (spread | ~sure).all()
    s = torch.where(unsure, torch.where(agree, s0, zero), s)
    residual = (grad - s.unsqueeze(-1) * r).abs().sum(-1)
    bound = rtol * (s.abs() * size + grad.abs().sum(-1)) + torch.finfo(grad.dtype).tiny
    no_scale = unsure & ~agree
    not_plain = (finite & ~no_scale & (residual > bound)).any()
    code = torch.where(not_plain, NOT_PLAIN, torch.where(no_scale.any(), NO_SCALE, 0))
    return s.unsqueeze(-1), code


def sigmoid_scale(grad: Tensor, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The (N, S, C) factor s with grad = s (sigmoid(z) - y), and the check's 0-d code.

    The scale is read entry by entry (``weight=``, ``pos_weight=`` with hard labels, per-sample
    weights, reductions), so the check is what an entry-wise scale can falsify: a finite entry
    whose sign differs from sigmoid(z) - y, or that is not 0 where sigmoid(z) - y is, gives
    NOT_PLAIN.
    """
    # The same expression as PyTorch's backward of BCEWithLogits, so that s is exact where it is
    # representable and the signs agree.
    r = torch.sigmoid(logits) - y
    finite = torch.isfinite(grad)
    wrong = finite & (((grad != 0) & (r == 0)) | (grad * r < 0))
    s = _ratio(grad, r)
    # A soft label exactly at its prediction: the incoming gradient vanishes there, while the
    # published loss's gradient need not. Such an entry takes the scale that every other entry
    # with a gradient shares (a "mean"/"sum" reduction); without one (per-entry weights) the
    # scale is unknown: NO_SCALE. A hard label (0/1) there is a saturated prediction, whose
    # gradient is rounding in both losses: it keeps s = 0. (Elsewhere r is PyTorch's own
    # expression, so s is exact however small r is.)
    soft = (y > 0) & (y < 1)
    unsure = soft & finite & (r == 0)
    sure = finite & ~unsure & (grad != 0)
    if s.numel():  # gather, not indexing: a 0-d tensor index would read it on the host
        best = torch.where(sure, r.abs(), -1).reshape(-1).argmax().reshape(1)
        s0 = s.reshape(-1).gather(0, best).reshape(())
    else:
        s0 = torch.zeros((), dtype=s.dtype, device=s.device)
    close = (s - s0).abs() <= _RTOL.get(grad.dtype, 1e-4) * s0.abs()
    agree = sure.any() & (close | ~sure).all()
    no_scale = (unsure & ~agree).any()
    s = torch.where(unsure, torch.where(agree, s0, 0), s)
    code = torch.where(wrong.any(), NOT_PLAIN, torch.where(no_scale, NO_SCALE, 0))
    return s, code


def passthrough_non_finite(grad: Tensor, out: Tensor, per_row: bool) -> Tensor:
    """``out`` in ``grad``'s dtype, except that non-finite incoming gradients pass through."""
    ok = torch.isfinite(grad)
    if per_row:
        ok = ok.all(-1, keepdim=True)
    return torch.where(ok, out.to(grad.dtype), grad)


class SurrogatePolicy(Policy):
    """Base of the policies that *replace* the gradient by that of another loss.

    Such a policy reads the forward logits, must see the plain loss's gradient (so it comes first
    in a chain, after row-wise weights at most: :func:`~labelgrad.chain` refuses anything else),
    and checks in every backward pass that the incoming gradient is that plain loss's gradient.

    ``check`` (constructor argument of every surrogate policy): ``None`` (default) raises at once
    on the CPU and, on an accelerator, at the policy's next call (the result is copied to pinned
    host memory without waiting, so the step is not stalled); ``True`` raises at once everywhere
    (one host-device synchronisation per backward pass); ``False`` turns the check off. It is
    skipped under ``torch.compile`` and ``torch.func`` transforms, which cannot raise on values.
    """

    reads_logits = True
    per_entry_scale: ClassVar[bool] = False
    """True when the loss scale is read entry by entry (BCE), so that entry-wise weights may come
    before the policy in a chain; False when it is read row by row (cross-entropy)."""
    plain_loss: ClassVar[str] = "F.cross_entropy"

    def __init__(self, check: bool | None = None) -> None:
        super().__init__()
        self.set_check(check)

    def set_check(self, check: bool | None) -> None:
        """Set ``check`` (see the class doc) and forget a pending result."""
        if check is not None and not isinstance(check, bool):
            raise TypeError(f"check must be True, False or None, got {check!r}")
        self.check = check
        self._pending: Tensor | None = None
        self._pending_host: Tensor | None = None

    def check_message(self, code: int) -> str:
        """The one-line error for a failed check (``code`` from the scale functions)."""
        name = type(self).__name__
        if code == NO_SCALE:
            unit, units, to = ("row", "rows", "sqrt(eps)")
            if self.per_entry_scale:
                unit, units, to = ("entry", "entries", "the last bit")
            return (
                f"{name} cannot read the loss scale: the prediction equals a soft target (to "
                f"{to}), where the incoming gradient vanishes, and no other {unit} of the batch "
                f"gives one shared scale (a 'mean'/'sum' reduction over {units} not at their "
                "target)"
            )
        if code == OUTSIDE:
            return f"{name}: a label lies outside the classes the policy keeps (classes=)"
        if code == NOT_HARD:
            return (
                f"{name} is defined for class labels: soft targets must be one-hot (0/1 values), "
                "got probabilities; pass class indices or one-hot labels"
            )
        smoothing = "" if self.per_entry_scale else ", label_smoothing= (pass it to the policy)"
        return (
            f"{name} replaces the gradient of plain {self.plain_loss}, but the incoming gradient "
            f"is not one: a loss it cannot reproduce (e.g. weight= with soft targets{smoothing}"
            ", a temperature, a second loss term on the same logits, or a policy before it)"
        )

    def report(self, code: Tensor) -> None:
        """Raise for a failed check now (CPU, ``check=True``) or at the next call (accelerator)."""
        if self.check is False or _tracing() or code.device.type == "meta":
            return
        if code.device.type == "cpu" or self.check:
            if value := int(code):
                raise ValueError(self.check_message(value))
            return
        # Sticky on the device, copied to host memory without waiting for the stream.
        pending = code if self._pending is None else torch.maximum(self._pending, code)
        self._pending = pending
        if self._pending_host is None:
            pin = pending.device.type == "cuda"
            self._pending_host = torch.zeros((), dtype=pending.dtype, pin_memory=pin)
        self._pending_host.copy_(pending, non_blocking=True)

    def check_call(self, num_classes: int, device: torch.device) -> None:
        super().check_call(num_classes, device)
        host = self._pending_host
        if host is not None and (value := int(host)):  # host memory: no synchronisation
            self._pending = None
            host.zero_()
            raise ValueError(f"{self.check_message(value)} [in an earlier backward pass]")
