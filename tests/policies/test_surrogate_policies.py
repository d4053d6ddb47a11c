"""What every surrogate-gradient policy shares: scale, composition, AMP, compile, no host sync."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg

F32 = torch.float32  # explicit: other test modules change the default dtype
C = 4


def ce(z, y):
    return F.cross_entropy(z, y)


def bce(z, y):
    return F.binary_cross_entropy_with_logits(z, y.clamp(min=0).to(z.dtype))


# (name, factory, loss, targets): softmax policies take class indices, sigmoid ones multi-hot.
CASES = [
    ("logit_adjust", lambda: lg.logit_adjust([8.0, 4.0, 2.0, 1.0]), ce, "index"),
    ("seesaw", lambda: lg.seesaw(C), ce, "index"),
    ("ldam_drw", lambda: lg.ldam_drw([8.0, 4.0, 2.0, 1.0], s=4.0, drw_start=1), ce, "index"),
    ("eql", lambda: lg.eql(0.1, [0.5, 0.3, 0.05, 0.01]), bce, "multi_hot"),
    ("asymmetric_focus", lambda: lg.asymmetric_focus(1.0, 4.0, 0.05), bce, "multi_hot"),
]
IDS = [c[0] for c in CASES]


def labels(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    if kind == "index":
        y = torch.randint(0, C, (n,), generator=g)
        y[::5] = -100
        return y
    return torch.randint(-1, 2, (n, C), generator=g)


@pytest.mark.parametrize(("name", "make", "loss", "kind"), CASES, ids=IDS)
def test_a_loss_scale_scales_the_gradient_exactly(name, make, loss, kind):
    """What a GradScaler or DDP's averaging does to the loss, the policy does to its output."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, C, generator=g, dtype=torch.float64, requires_grad=True)
    y = labels(kind, 16, g)
    a, b = make(), make()
    (g1,) = torch.autograd.grad(loss(a(z, y), y), z)
    (g2,) = torch.autograd.grad(1024.0 * loss(b(z, y), y), z)
    torch.testing.assert_close(g2, 1024.0 * g1, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize(("name", "make", "loss", "kind"), CASES, ids=IDS)
def test_composes_with_chain_and_a_clip_after_it(name, make, loss, kind):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, C, generator=g, dtype=torch.float64, requires_grad=True)
    y = labels(kind, 16, g)
    (alone,) = torch.autograd.grad(loss(lg.chain(lg.mask_unknown(), make())(z, y), y), z)
    chained = lg.chain(lg.mask_unknown(), make(), lg.clip_per_sample(1e-3))
    (got,) = torch.autograd.grad(loss(chained(z, y), y), z)
    norms = alone.norm(dim=1, keepdim=True)
    torch.testing.assert_close(got, alone * (1e-3 / norms).clamp(max=1), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("name", "make", "loss", "kind"), CASES, ids=IDS)
def test_no_host_sync_on_meta_tensors(name, make, loss, kind):
    policy = make().to("meta")
    z = torch.empty(8, C, device="meta", requires_grad=True)
    y = (
        torch.empty(8, dtype=torch.long, device="meta")
        if kind == "index"
        else torch.empty(8, C, device="meta")
    )
    (g,) = torch.autograd.grad(policy(z, y), z, torch.empty(8, C, device="meta"))
    assert g.shape == z.shape and g.device.type == "meta"


@pytest.mark.parametrize(("name", "make", "loss", "kind"), CASES, ids=IDS)
def test_non_finite_gradients_pass_through(name, make, loss, kind):
    z = torch.zeros(2, C, requires_grad=True)
    y = torch.tensor([0, 1]) if kind == "index" else torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]])
    # The plain loss's gradient (what the policy checks for), one entry NaN.
    zz = z.detach().requires_grad_()
    (up,) = torch.autograd.grad(loss(zz, y), zz)
    up = up.clone()
    up[0, 1] = float("nan")
    (g,) = torch.autograd.grad(make()(z, y), z, up)
    assert torch.isnan(g[0, 1]) and torch.isfinite(g[1]).all()


@pytest.mark.parametrize(("name", "make", "loss", "kind"), CASES, ids=IDS)
def test_bf16_autocast_follows_the_float32_gradient(name, make, loss, kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16, dtype=F32), nn.Tanh(), nn.Linear(16, C, dtype=F32))
    low = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 6, generator=g, dtype=F32)
    y = labels(kind, 32, g)
    loss(make()(model(x), y), y).backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = low(x)
        assert z.dtype == torch.bfloat16
        out = make()(z, y)
    loss(out.float(), y).backward()
    for p, q in zip(model.parameters(), low.parameters(), strict=True):
        assert q.grad is not None and torch.isfinite(q.grad).all()
        torch.testing.assert_close(q.grad, p.grad, rtol=0.1, atol=0.02 * float(p.grad.abs().max()))


class Head(nn.Module):
    def __init__(self, policy: lg.Policy, loss) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8, dtype=F32), nn.Tanh(), nn.Linear(8, C, dtype=F32))
        self.policy = policy
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.policy(self.net(x), y), y)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("policy", "loss", "kind"),
    [
        (
            # One replacing policy per chain (two are refused since issue 20).
            lambda: lg.chain(
                lg.mask_unknown(), lg.seesaw(C), lg.class_weights([4.0, 3.0, 2.0, 1.0])
            ),
            ce,
            "index",
        ),
        (
            lambda: lg.chain(lg.asymmetric_focus(), lg.eql(0.1, [0.5, 0.3, 0.05, 0.01])),
            bce,
            "multi_hot",
        ),
    ],
    ids=["softmax", "sigmoid"],
)
def test_compiled_fullgraph_matches_eager(policy, loss, kind):
    torch.manual_seed(0)
    eager = Head(policy(), loss)
    module = copy.deepcopy(eager)
    compiled = torch.compile(module, fullgraph=True, backend="inductor")
    g = torch.Generator().manual_seed(3)
    for _ in range(2):  # seesaw's counts change between steps
        x = torch.randn(8, 6, generator=g, dtype=F32)
        y = labels(kind, 8, g)
        eager(x, y).backward()
        compiled(x, y).backward()
        for p, q in zip(eager.parameters(), module.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)
            p.grad, q.grad = None, None
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(module.state_dict()[key], value)
