"""lg.seesaw equals autograd of mmdetection's Seesaw cross-entropy, batch after batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg
from _multiproc import run_ranks

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-10}


class ReferenceSeesaw:
    """mmdetection's seesaw_ce_loss on the labelled rows, counts updated before each loss."""

    def __init__(self, num_classes: int, p: float, q: float, eps: float = 1e-2) -> None:
        self.cum = torch.zeros(num_classes, dtype=F64)
        self.c, self.p, self.q, self.eps = num_classes, p, q, eps

    def loss(self, z: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        for label in range(self.c):
            self.cum[label] += (y == label).sum()
        keep = y != -100
        z, y = z[keep], y[keep]
        onehot = F.one_hot(y, self.c).to(F64)
        w = torch.ones_like(z)
        if self.p > 0:
            ratio = self.cum[None, :].clamp(min=1) / self.cum[:, None].clamp(min=1)
            below = (ratio < 1.0).to(F64)
            w = w * (ratio.pow(self.p) * below + (1 - below))[y]
        if self.q > 0:
            scores = F.softmax(z.detach(), dim=1)
            own = scores[torch.arange(len(y)), y]
            ratio = scores / own[:, None].clamp(min=self.eps)
            above = (ratio > 1.0).to(F64)
            w = w * (ratio.pow(self.q) * above + (1 - above))
        return F.cross_entropy(z + w.log() * (1 - onehot), y, reduction=reduction)


def batches(steps: int, n: int, c: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        z = 2 * torch.randn(n, c, generator=g, dtype=F64)
        # Long-tailed labels: class k drawn with probability ~ 2^-k.
        probs = 0.5 ** torch.arange(c, dtype=F64)
        y = torch.multinomial(probs, n, replacement=True, generator=g)
        y[torch.rand(n, generator=g) < 0.1] = -100
        out.append((z, y))
    return out


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("p", "q"), [(0.8, 2.0), (0.8, 0.0), (0.0, 2.0), (1.5, 0.5)])
def test_equals_mmdetection_seesaw_over_batches(reduction, p, q):
    c = 6
    policy, ref = lg.seesaw(c, p=p, q=q), ReferenceSeesaw(c, p, q)
    for z, y in batches(4, 40, c):
        zz = z.clone().requires_grad_(True)
        (got,) = torch.autograd.grad(F.cross_entropy(policy(zz, y), y, reduction=reduction), zz)
        zr = z.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(ref.loss(zr, y, reduction), zr)
        torch.testing.assert_close(got, want, **TOL)
        assert torch.equal(policy.cum_samples.double(), ref.cum)
        assert torch.equal(got[y == -100], torch.zeros_like(got[y == -100]))


@pytest.mark.parametrize(
    ("shape", "class_dim"), [((3, 5, 4, 2), 1), ((3, 6, 5), -1)], ids=["NCHW", "NTC"]
)
def test_dense_and_token_layouts_equal_the_flattened_rows(shape, class_dim):
    g = torch.Generator().manual_seed(3)
    cd = class_dim % len(shape)
    z = 2 * torch.randn(*shape, generator=g, dtype=F64)
    y = torch.randint(0, 5, shape[:cd] + shape[cd + 1 :], generator=g)
    y.view(-1)[::4] = -100
    zz = z.clone().requires_grad_(True)
    out = lg.seesaw(5)(zz, y, class_dim=class_dim)
    (got,) = torch.autograd.grad(F.cross_entropy(out.movedim(cd, 1), y), zz)
    flat_z = z.movedim(cd, -1).reshape(-1, 5).clone().requires_grad_(True)
    (want,) = torch.autograd.grad(
        ReferenceSeesaw(5, 0.8, 2.0).loss(flat_z, y.reshape(-1), "mean"), flat_z
    )
    torch.testing.assert_close(got.movedim(cd, -1).reshape(-1, 5), want, **TOL)


def test_state_dict_round_trip_continues_identically():
    data = batches(4, 30, 5, seed=4)
    a = lg.seesaw(5)
    for z, y in data[:2]:
        F.cross_entropy(a(z.clone().requires_grad_(True), y), y).backward()
    b = lg.seesaw(5)
    b.load_state_dict(a.state_dict())
    assert list(b.state_dict()) == ["cum_samples"]
    for z, y in data[2:]:
        grads = []
        for policy in (a, b):
            zz = z.clone().requires_grad_(True)
            (gz,) = torch.autograd.grad(F.cross_entropy(policy(zz, y), y), zz)
            grads.append(gz)
        assert torch.equal(grads[0], grads[1])
    assert torch.equal(a.cum_samples, b.cum_samples)


def test_no_state_update_and_non_finite_batches_leave_the_counts():
    policy = lg.seesaw(3)
    z = torch.zeros(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 1, 2])
    with lg.no_state_update():
        F.cross_entropy(policy(z, y), y).backward()
    assert torch.equal(policy.cum_samples, torch.zeros(3))
    up = torch.zeros(4, 3)
    up[0, 0] = float("inf")
    (g,) = torch.autograd.grad(policy(z, y), z, up)
    assert torch.isinf(g[0, 0]) and torch.equal(policy.cum_samples, torch.zeros(3))


# ------------------------------------------------------------------- 2-process DDP (gloo)

C, STEPS, GLOBAL = 5, 3, 12


def _train(part: slice, world: int) -> dict[str, Any]:
    torch.manual_seed(0)
    f32 = torch.float32
    model = torch.nn.Linear(4, C, dtype=f32)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp: torch.nn.Module = DDP(model)
    else:
        ddp = model
    policy = lg.seesaw(C)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(GLOBAL, 4, generator=g, dtype=f32)[part]
        y = torch.multinomial(0.5 ** torch.arange(C, dtype=f32), GLOBAL, True, generator=g)[part]
        F.cross_entropy(policy(ddp(x), y), y).backward()  # local mean; DDP averages
        opt.step()
        opt.zero_grad()
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "state": policy.state_dict(),
    }


def _ddp_worker(rank: int, world: int, out: str) -> None:
    n = GLOBAL // world
    torch.save(_train(slice(rank * n, (rank + 1) * n), world), Path(out) / f"seesaw{rank}.pt")


@pytest.mark.timeout(200)
def test_two_process_ddp_equals_one_process_on_the_whole_batch(tmp_path):
    run_ranks(_ddp_worker, str(tmp_path), world_size=2, timeout=150)
    ref = _train(slice(None), 1)
    for rank in range(2):
        res = torch.load(tmp_path / f"seesaw{rank}.pt")
        assert torch.equal(res["state"]["cum_samples"], ref["state"]["cum_samples"])
        for p, q in zip(res["params"], ref["params"], strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_accumulation_window_commits_the_whole_window_once():
    """Each micro-batch sees the starting counts plus its own labels; the total is committed."""
    z = torch.randn(6, 4, dtype=F64)
    y = torch.tensor([0, 0, 1, 2, 0, 3])
    policy, ref = lg.seesaw(4), ReferenceSeesaw(4, 0.8, 2.0)
    with lg.accumulation_window(policy):
        for part in (slice(0, 3), slice(3, 6)):
            zz = z[part].clone().requires_grad_(True)
            (got,) = torch.autograd.grad(F.cross_entropy(policy(zz, y[part]), y[part]), zz)
            ref.cum.zero_()  # the window's starting counts: zero
            zr = z[part].clone().requires_grad_(True)
            (want,) = torch.autograd.grad(ref.loss(zr, y[part], "mean"), zr)
            torch.testing.assert_close(got, want, **TOL)
    assert policy.cum_samples.tolist() == [3.0, 1.0, 1.0, 1.0]
