# Writing your own policy: subclass lg.Policy (stateless) or lg.StatefulPolicy
# (statistics in registered buffers) and implement transform(grad, ctx). grad is
# dL/dlogits laid out (N, S, C): samples, positions (1 for plain classification),
# classes; ctx (an lg.GradContext) carries the targets in the same layout, the loss
# scale under AMP and whether statistics may be updated.
import torch
import torch.nn.functional as F

import labelgrad as lg


class ScaleNegatives(lg.Policy):
    """Multiply the gradient of negative labels by ``factor`` (the rest as is)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def transform(self, grad: torch.Tensor, ctx: lg.GradContext) -> torch.Tensor:
        t = ctx.require_targets(self)  # a clear error if called without targets
        negative = t.known & ~t.positive
        return torch.where(
            negative, grad * self.factor, grad
        )  # no host sync, no Python loop


torch.manual_seed(0)
z = torch.randn(6, 4, requires_grad=True)
y = torch.randint(0, 2, (6, 4))
loss = F.binary_cross_entropy_with_logits(
    ScaleNegatives(0.3)(z, y), y.float(), reduction="sum"
)
(ours,) = torch.autograd.grad(loss, z)
# Check against an independent reference: the same loss with per-entry weights.
weight = torch.where(y == 1, 1.0, 0.3)
ref = F.binary_cross_entropy_with_logits(z, y.float(), weight=weight, reduction="sum")
(expected,) = torch.autograd.grad(ref, z)
print("ScaleNegatives == BCE(weight=...):", torch.allclose(ours, expected))


class InverseFrequency(lg.StatefulPolicy):
    """Weight positives of class c by 1 / (share of c's positives so far), capped."""

    def __init__(self, num_classes: int, cap: float = 10.0) -> None:
        super().__init__()
        self.cap = cap
        # add_state registers a buffer: state_dict, .to(device), reset() and DDP sums
        # for free.
        self.add_state("positives", torch.zeros(num_classes))
        self.add_state("seen", torch.zeros(()))

    def expected_num_classes(self) -> int:
        return self.positives.numel()  # lets the gate check the logits' class axis

    def transform(self, grad: torch.Tensor, ctx: lg.GradContext) -> torch.Tensor:
        t = ctx.require_targets(self)
        share = self.positives / self.seen.clamp(min=1)
        w = torch.where(
            self.seen > 0, (1 / share.clamp(min=1 / self.cap)), torch.ones_like(share)
        )
        out = torch.where(t.positive, grad * w.to(grad.dtype), grad)
        if (
            ctx.update_state
        ):  # False inside lg.no_state_update() (auxiliary backward passes)
            pos = (t.positive & t.known).sum(dim=(0, 1)).float()
            n, s = (
                t.positive.shape[0],
                t.positive.shape[1],
            )  # shapes are host ints: no sync
            count = torch.full((), float(n * s), device=grad.device)
            pos, count = self.reduce_increments(
                pos, count
            )  # summed over ranks under DDP
            self.positives.add_(pos)
            self.seen.add_(count)
        return out


policy = InverseFrequency(num_classes=3)
for _ in range(3):
    y = (torch.rand(8, 3) < torch.tensor([0.5, 0.25, 0.05])).long()
    z = torch.zeros(8, 3, requires_grad=True)
    policy(z, y).sum().backward()
print("positives seen:", policy.positives.tolist(), "of", int(policy.seen), "samples")

# Auxiliary backward passes must not count the batch again.
before = policy.positives.clone()
with lg.no_state_update():
    print(
        "inside no_state_update, state_updates_enabled() =",
        lg.policies.state_updates_enabled(),
    )
    z = torch.zeros(8, 3, requires_grad=True)
    policy(z, y).sum().backward()
print(
    "statistics unchanged by the auxiliary pass:", torch.equal(before, policy.positives)
)

# The statistics round-trip through state_dict exactly (checkpoint resume).
restored = InverseFrequency(num_classes=3)
restored.load_state_dict(policy.state_dict())
print("state_dict keys:", sorted(policy.state_dict()))
print(
    "round trip exact:",
    all(
        torch.equal(a, b)
        for a, b in zip(policy.state_dict().values(), restored.state_dict().values())
    ),
)

# Custom policies compose with the built-in ones.
combined = lg.chain(
    lg.mask_unknown(), ScaleNegatives(0.5), lg.clip_per_sample(max_norm=1.0)
)
z = torch.randn(4, 3, requires_grad=True)
combined(z, torch.tensor([[1, -1, 0]] * 4)).sum().backward()
print("chained gradient, row 0:", [round(v, 3) for v in z.grad[0].tolist()])


# Your own weighting for gradient aggregation (level 3): subclass
# lg.aggregators.GramianWeighting and map the K x K Gramian G = J J^T of the label-group
# gradients to K weights. The update is J^T w, the gradient of sum_k w_k L_k. Here:
# every label contributes a step of equal length.
class EqualNorm(lg.aggregators.GramianWeighting):
    def _weights(self, gramian: torch.Tensor) -> torch.Tensor:
        norms = gramian.diagonal().clamp(min=0).sqrt()
        k = gramian.shape[0]
        return torch.where(norms > 0, 1 / (k * norms.clamp(min=1e-12)), 0.0)


torch.manual_seed(0)
trunk, head = (
    torch.nn.Linear(5, 8),
    torch.nn.Linear(8, 3),
)  # the trunk is shared by 3 labels
z, y = head(torch.relu(trunk(torch.randn(10, 5)))), torch.randint(0, 2, (10, 3)).float()
losses = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(
    0
)  # (K,) = (3,)
rows = []
for loss_k in losses:  # J: one row per label, its gradient on the shared parameters
    grads = torch.autograd.grad(loss_k, list(trunk.parameters()), retain_graph=True)
    rows.append(torch.cat([g.flatten() for g in grads]))
jac = torch.stack(rows)
w = EqualNorm().weights(jac @ jac.T)
contrib = (w[:, None] * jac).norm(dim=1)
cos = lg.conflicts(jac @ jac.T)[0]
print("cosines of label 0 with labels 0, 1, 2:", [round(v, 3) for v in cos.tolist()])
print("per-label step lengths |w_k g_k|:", [round(v, 4) for v in contrib.tolist()])
