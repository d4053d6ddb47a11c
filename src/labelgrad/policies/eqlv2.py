"""EQLv2: gradient-driven reweighting of positive and negative labels (Tan et al., CVPR 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad._validation import as_count, as_nonnegative_scalar
from labelgrad.policies.base import GradContext
from labelgrad.policies.stateful import StatefulPolicy

__all__ = ["EQLv2", "eqlv2"]


class EQLv2(StatefulPolicy):
    """Equalization loss v2 as a policy at the logits. Built by :func:`eqlv2`.

    Buffers (float32, saved in ``state_dict``): ``pos_grad`` and ``neg_grad`` (C,), the
    accumulated magnitudes of the positive and negative gradient this policy put out for each
    class, and ``num_updates``, the number of batches accumulated.
    """

    pos_grad: Tensor
    neg_grad: Tensor
    num_updates: Tensor

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

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, gamma={self.gamma}, mu={self.mu}, alpha={self.alpha}"
        )

    def expected_num_classes(self) -> int | None:
        return self.num_classes

    def weights(self) -> tuple[Tensor, Tensor]:
        """The current (positive, negative) weights per class, each (C,) float32."""
        ratio = self.pos_grad / (self.neg_grad + 1e-10)
        neg_w = torch.sigmoid(self.gamma * (ratio - self.mu))
        # Before any statistics every weight is 1, as in the published implementation.
        neg_w = torch.where(self.num_updates > 0, neg_w, torch.ones_like(neg_w))
        pos_w = 1 + self.alpha * (1 - neg_w)
        return pos_w, neg_w

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        t = ctx.require_targets(self)
        pos_w, neg_w = self.weights()
        one = torch.ones((), dtype=torch.float32, device=grad.device)
        factor = torch.where(t.positive, pos_w, torch.where(t.known, neg_w, one))
        out = grad * factor.to(grad.dtype)
        if ctx.update_state:
            mag = ctx.unscale(out.detach().float().abs())
            pos = torch.where(t.positive, mag, 0.0).sum(dim=(0, 1))
            neg = torch.where(t.known & ~t.positive, mag, 0.0).sum(dim=(0, 1))
            pos, neg = self.reduce_increments(pos, neg)
            # A batch with an overflow (GradScaler will skip it) must not poison the statistics.
            ok = self.all_finite(pos, neg)
            self.pos_grad.add_(torch.where(ok, pos, 0.0))
            self.neg_grad.add_(torch.where(ok, neg, 0.0))
            self.num_updates.add_(ok.float())
        return out


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
