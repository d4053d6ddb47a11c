"""GradContext.logits: policies that set reads_logits see the forward logits, laid out like grad."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg

F32 = torch.float32  # explicit: other test modules change the default dtype


class ReturnLogits(lg.Policy):
    """Replaces the gradient by the logits: z.grad == z proves the layout round trip."""

    requires_targets = False
    reads_logits = True

    def transform(self, grad, ctx):
        z = ctx.require_logits(self)
        assert z.shape == grad.shape and z.dtype == grad.dtype
        return z


class RecordLogits(lg.Policy):
    requires_targets = False

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def transform(self, grad, ctx):
        self.seen.append(ctx.logits)
        return grad


@pytest.mark.parametrize(
    ("shape", "class_dim"),
    [((5, 3), 1), ((2, 3, 4, 5), 1), ((2, 6, 3), -1), ((2, 6, 3), 2), ((0, 3), 1)],
    ids=["NC", "NCHW", "NTC", "NTC-dim2", "empty"],
)
def test_policy_sees_logits_in_the_gradient_layout(shape, class_dim):
    z = torch.randn(*shape, dtype=F32, requires_grad=True)
    out = ReturnLogits()(z, class_dim=class_dim)
    (g,) = torch.autograd.grad(out, z, torch.randn_like(z))
    assert torch.equal(g, z.detach())


def test_logits_layout_matches_targets_layout():
    """Entry (n, s, c) of ctx.logits belongs to the label at ctx.targets[n, s, c]."""

    class PositiveLogit(lg.Policy):
        reads_logits = True

        def transform(self, grad, ctx):
            t = ctx.require_targets(self)
            return torch.where(t.positive, ctx.require_logits(self), 0.0)

    z = torch.randn(2, 4, 3, 5, dtype=F32, requires_grad=True)
    y = torch.randint(0, 4, (2, 3, 5))
    (g,) = torch.autograd.grad(PositiveLogit()(z, y).sum(), z)
    onehot = F.one_hot(y, 4).movedim(-1, 1).bool()
    assert torch.equal(g, torch.where(onehot, z.detach(), 0.0))


def test_logits_are_none_unless_a_policy_reads_them():
    rec = RecordLogits()
    z = torch.randn(3, 4, requires_grad=True)
    rec(z).sum().backward()
    assert rec.seen == [None]
    with pytest.raises(ValueError, match="RecordLogits reads the logits: set reads_logits"):
        lg.GradContext(targets=None, grad_scale=None, update_state=True).require_logits(rec)


def test_a_chain_keeps_the_logits_for_its_reading_member():
    rec = RecordLogits()
    z = torch.randn(3, 4, requires_grad=True)
    policy = lg.chain(rec, lg.mask_unknown(), ReturnLogits())
    (g,) = torch.autograd.grad(policy(z, torch.tensor([0, -100, 2])).sum(), z)
    assert torch.equal(rec.seen[0], z.detach()[:, None, :])  # (N, S=1, C)
    assert torch.equal(g, z.detach())  # ReturnLogits is last: it replaces the masked gradient


def _saved_storages(fn) -> list[int]:
    ptrs: list[int] = []

    def pack(t):
        ptrs.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return ptrs


def test_the_gate_saves_the_logits_themselves_and_only_when_read():
    """No copy: the saved tensor shares the logits' storage; nothing saved for other policies."""
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    ptr = z.untyped_storage().data_ptr()
    reading = _saved_storages(lambda: lg.chain(lg.mask_unknown(), ReturnLogits())(z, y))
    plain = _saved_storages(lambda: lg.mask_unknown()(z, y))
    assert reading[0] == ptr and len(reading) == len(plain) + 1  # the targets, as before
    assert ptr not in plain


def test_reading_logits_has_no_host_sync_on_meta_tensors():
    policy = lg.chain(lg.mask_unknown(), ReturnLogits())
    z = torch.empty(8, 4, device="meta", requires_grad=True)
    (g,) = torch.autograd.grad(policy(z, torch.empty(8, 4, device="meta")).sum(), z)
    assert g.shape == z.shape and g.device.type == "meta"


def test_surrogate_policy_under_vmap_per_sample_grad():
    from torch.func import grad, vmap

    w = torch.randn(3, 4, dtype=F32)
    x = torch.randn(5, 3, dtype=F32)

    def loss(w, xi):
        return ReturnLogits()(xi[None] @ w).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(w, x)
    expected = x[:, :, None] * (x @ w)[:, None, :]  # d/dW with dL/dz := z
    torch.testing.assert_close(per_sample, expected)


class SurrogateHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(6, 4, dtype=F32)
        self.policy = lg.chain(lg.mask_unknown(), ReturnLogits())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.policy(self.net(x), y), y)


@pytest.mark.timeout(240)
def test_compiled_surrogate_policy_fullgraph_matches_eager():
    torch.manual_seed(0)
    eager = SurrogateHead()
    module = SurrogateHead()
    module.load_state_dict(eager.state_dict())
    compiled = torch.compile(module, fullgraph=True, backend="inductor")
    x = torch.randn(8, 6, dtype=F32)
    y = torch.randint(0, 4, (8,))
    eager(x, y).backward()
    compiled(x, y).backward()
    for p, q in zip(eager.parameters(), module.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(eager.net.bias.grad, eager.net(x).detach().sum(0))  # dL/dz := z
