"""EQLv2: gradient-driven reweighting of positive and negative labels (Tan et al., CVPR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad._validation import as_count, as_nonnegative_scalar
from labelgrad.policies._scalars import scalar
from labelgrad.policies.linear import LinearPolicy, Multiplier, like
from labelgrad.policies.policy import GradContext
from labelgrad.policies.stateful import StatefulPolicy

__all__ = ["EQLv2", "eqlv2"]


class EQLv2(StatefulPolicy, LinearPolicy):
    """Equalization loss v2 as a policy at the logits. Built by :func:`eqlv2`.

    Buffers (float32, saved in ``state_dict``): ``pos_grad`` and ``neg_grad`` (C,), the
    accumulated magnitudes of the positive and negative gradient this policy put out for each
    class, and ``num_updates``, the number of batches accumulated.
    """

    pos_grad: Tensor
    neg_grad: Tensor
    num_updates: Tensor

    observes_output = True

    def __init__(
        self, num_classes: int, *, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0
    ) -> None:
        super().__init__()
        self.num_classes = as_count(num_classes, "num_classes")
        self.gamma = as_nonnegative_scalar(gamma, "gamma")
        self.mu = float(mu)
        if not torch.isfinite(torch.tensor(self.mu)):
            raise ValueError(f"mu must be finite, got {mu!r}")
        self.alpha = as_nonnegative_scalar(alpha, "alpha")
        self.add_state("pos_grad", torch.zeros(num_classes, dtype=torch.float32))
        self.add_state("neg_grad", torch.zeros(num_classes, dtype=torch.float32))
        self.add_state("num_updates", torch.zeros((), dtype=torch.float32), window="count")
        self._constant_cache: dict[tuple[object, ...], tuple[Tensor, ...]] = {}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}"
        )

    def expected_num_classes(self) -> int | None:
        return self.num_classes

    def check_call(self, num_classes: int, device: torch.device) -> None:
        if self.pos_grad.device != device:
            raise ValueError(
                f"EQLv2's statistics are on {self.pos_grad.device} but the logits on {device}: "
                "move the policy with policy.to(logits.device)"
            )
        super().check_call(num_classes, device)

    def _constants(self, like: Tensor) -> tuple[Tensor, ...]:
        """eps, mu, gamma, alpha, 0, 1 and inf as 0-d tensors of ``like``'s dtype and device.

        Looked up once per call instead of once per use (see labelgrad.policies._scalars).
        """
        key = (like.dtype, like.device, self.mu, self.gamma, self.alpha)
        found = self._constant_cache.get(key)
        if found is None:
            values = (1e-10, self.mu, self.gamma, self.alpha, 0.0, 1.0, float("inf"))
            found = tuple(scalar(v, like) for v in values)
            if not torch.compiler.is_compiling():
                self._constant_cache[key] = found
        return found

    def weights(self) -> tuple[Tensor, Tensor]:
        """The current (positive, negative) weights per class, each (C,) float32."""
        s = self.pos_grad
        eps, mu, gamma, alpha, zero, one, _ = self._constants(s)
        ratio = s / (self.neg_grad + eps)
        # The published formulas, in their order (float32 rounding included), in place; 0-d
        # constants instead of Python floats (see labelgrad.policies._scalars).
        neg_w = torch.sigmoid(ratio.sub_(mu).mul_(gamma))
        # Before any statistics every weight is 1, as in the published implementation.
        neg_w = torch.where(self.num_updates > zero, neg_w, one)
        pos_w = torch.sub(one, neg_w).mul_(alpha).add_(one)
        return pos_w, neg_w

    def multiplier(self, grad: Tensor, ctx: GradContext) -> Multiplier:
        ctx.require_targets(self)
        pos_w, neg_w = self.weights()
        return Multiplier(pos=like(pos_w, grad), neg=like(neg_w, grad))

    def observe(self, out: Tensor, ctx: GradContext, applied: Multiplier) -> None:
        if not ctx.update_state:
            return
        t = ctx.require_targets(self)
        mag = (out.detach() if out.requires_grad else out).abs()
        mag = ctx.unscale(mag if mag.dtype == torch.float32 else mag.float())
        *_, zero, one, inf = self._constants(mag)
        # Masks as 0/1 factors: torch.where on a bool mask is slow on the CPU.
        pos_part = mag * t.mask_as("positive", mag.dtype)
        # mag - pos_part is exact (x - x = 0, x - 0 = x): the negative part, plus unknown entries
        # unless a mask already zeroed them.
        neg_part = mag - pos_part
        if not applied.masks_unknown:
            neg_part = neg_part * t.mask_as("known", mag.dtype)
        pos, neg = self.reduce_increments(pos_part.sum(dim=(0, 1)), neg_part.sum(dim=(0, 1)))
        # Sums of magnitudes: the total is finite iff every entry is (an overflow batch is
        # skipped, as GradScaler skips the step), and 0 when nothing was counted (no known
        # label, or no gradient): such a batch leaves the statistics and weights as they were.
        # total * (inf - total) > 0 says 0 < total < inf in three operators (0 * inf, inf - inf
        # and NaN give NaN, which is not > 0).
        total = (pos + neg).sum()
        ok = torch.mul(total, torch.sub(inf, total)) > zero
        self.pos_grad.add_(torch.where(ok, pos, zero))
        self.neg_grad.add_(torch.where(ok, neg, zero))
        self.num_updates.add_(torch.where(ok, one, zero))


def eqlv2(num_classes: int, *, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0) -> EQLv2:
    """EQLv2 (Tan et al., "Equalization Loss v2", CVPR 2021) as a gradient policy.

    Negative entries of class c are multiplied by f(g_c) and positive entries by
    1 + alpha (1 - f(g_c)), with f(x) = sigmoid(gamma (x - mu)) and g_c the ratio of the
    accumulated positive to negative gradient magnitude of class c, taken, as in the published
    code, from the gradient this policy puts out (after its weighting), over all batches so far.
    Every weight is 1 before the first batch. Unknown entries are left as they are and not
    counted. Statistics are float32 buffers, summed over ranks under torch.distributed, and skip
    batches with non-finite gradients.

    The statistics follow the scale of the incoming gradient: use a loss with a fixed
    normalisation (sum, or mean over a fixed batch size) and attach the GradScaler
    (:meth:`~labelgrad.Policy.attach_grad_scaler`) under AMP.

    Args:
        num_classes: C.
        gamma: steepness of the mapping f. Default 12.
        mu: centre of the mapping f. Default 0.8.
        alpha: extra weight of positive entries. Default 4.

    Example:
        >>> import torch, labelgrad as lg
        >>> policy = lg.eqlv2(num_classes=3)
        >>> z = torch.zeros(2, 3, requires_grad=True)
        >>> policy(z, torch.tensor([0, 0])).sum().backward()
        >>> policy.pos_grad.tolist(), policy.neg_grad.tolist()
        ([2.0, 0.0, 0.0], [0.0, 2.0, 2.0])
    """
    return EQLv2(num_classes, gamma=gamma, mu=mu, alpha=alpha)
