"""lg.project_replay against a direct A-GEM implementation, step by step, and GEM against NNLS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import nn

import labelgrad as lg

F64 = torch.float64


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 6)).double()


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    return torch.cat([g.reshape(-1) for g in grads])


def data(step: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(16, 5, generator=g, dtype=F64)
    y = torch.randint(3, 6, (16,), generator=g)  # the current task: classes 3..5
    xm = torch.randn(10, 5, generator=g, dtype=F64)
    ym = torch.randint(0, 3, (10,), generator=g)  # the replay memory: old classes 0..2
    if step % 3 == 2:  # a batch that agrees with the memory: A-GEM leaves it alone
        x, y = xm.repeat(2, 1), ym.repeat(2)
    return x, y, xm, ym


def direct_agem_step(model: nn.Module, lr: float, step: int, frozen_rows: int = 0) -> bool:
    """The published algorithm on flattened gradients; returns whether it projected."""
    x, y, xm, ym = data(step)
    params = list(model.parameters())
    g = flat_grad(F.cross_entropy(model(x), y), params)
    ref = flat_grad(F.cross_entropy(model(xm), ym), params)
    dot = g @ ref
    if dot < 0:
        g = g - dot / (ref @ ref) * ref
    with torch.no_grad():
        head_w, head_b = model[2].weight.clone(), model[2].bias.clone()
        offset = 0
        for p in params:
            p -= lr * g[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        model[2].weight[:frozen_rows] = head_w[:frozen_rows]
        model[2].bias[:frozen_rows] = head_b[:frozen_rows]
    return bool(dot < 0)


@pytest.mark.parametrize("engine", ["exact", "auto"])
def test_equals_direct_agem_step_by_step(engine):
    model, ref_model = make_model(), make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    projected = []
    for step in range(6):
        x, y, xm, ym = data(step)
        out = lg.project_replay(
            F.cross_entropy(model(x), y), F.cross_entropy(model(xm), ym), model, engine=engine
        )
        opt.step()
        opt.zero_grad()
        projected.append(direct_agem_step(ref_model, 0.3, step))
        assert bool(out.weights[1] > 0) == projected[-1]
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert any(projected) and not all(projected)  # both branches of A-GEM were exercised


def test_with_row_rules_freezing_the_old_rows():
    model, ref_model = make_model(1), make_model(1)
    opt = lg.RowRules(torch.optim.SGD(model.parameters(), lr=0.3), rows=model[2], frozen=[0, 1, 2])
    for step in range(4):
        x, y, xm, ym = data(step)
        lg.project_replay(F.cross_entropy(model(x), y), F.cross_entropy(model(xm), ym), model)
        opt.step(targets=y)
        opt.zero_grad()
        direct_agem_step(ref_model, 0.3, step, frozen_rows=3)
        for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert torch.equal(model[2].weight[:3], make_model(1)[2].weight[:3])


def gem_reference(jac: torch.Tensor) -> torch.Tensor:
    """min |g + R^T v|^2 over v >= 0 is non-negative least squares: scipy's NNLS."""
    g, r = jac[0].numpy(), jac[1:].numpy()
    v, _ = nnls(r.T, -g)
    return torch.from_numpy(g + r.T @ v)


def hard_jacobians() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = [torch.randn(1 + m, 9, generator=g, dtype=F64) for m in (1, 2, 3, 5, 8, 12)]
    j = torch.randn(4, 9, generator=g, dtype=F64)
    out.append(torch.cat([j, j[1:2], -j[0:1]]))  # duplicated group; a group opposite to g
    out.append(torch.cat([j, torch.zeros(2, 9, dtype=F64)]))  # groups with no memory samples
    low = torch.randn(6, 2, generator=g, dtype=F64) @ torch.randn(2, 9, generator=g, dtype=F64)
    out.append(low)  # rank 2
    scaled = torch.randn(4, 9, generator=g, dtype=F64) * torch.tensor([[1.0], [1e3], [1e-3], [1.0]])
    out.append(scaled.to(F64))  # ill-conditioned
    out.append(torch.cat([-j[1:2] * 2.0, j[1:]]))  # g exactly opposite to a group
    return out


@pytest.mark.parametrize("jac", hard_jacobians(), ids=lambda j: f"K{j.shape[0]}")
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_per_group_projection_equals_nnls(jac, dtype):
    w = lg.ReplayProjection().weights((jac @ jac.T).to(dtype))
    assert w.dtype == dtype and w[0] == 1 and bool((w >= 0).all())
    got = w.double() @ jac
    want = gem_reference(jac)
    tol = 1e-6 if dtype == F64 else 2e-3
    scale = max(float(jac.norm()), 1.0)
    torch.testing.assert_close(got, want, rtol=0, atol=tol * scale)
    assert bool((jac[1:] @ got >= -tol * scale**2).all())  # no replay loss goes up


def test_one_group_is_the_agem_closed_form():
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        jac = torch.randn(2, 4, generator=g, dtype=F64)
        w = lg.ReplayProjection().weights(jac @ jac.T)
        gv, r = jac[0], jac[1]
        want = gv - min(float(gv @ r), 0.0) / float(r @ r) * r
        torch.testing.assert_close(w @ jac, want, rtol=0, atol=1e-12)
    zero = torch.stack([torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64)])
    assert lg.ReplayProjection().weights(zero @ zero.T).tolist() == [1.0, 0.0]


def test_no_host_sync_on_meta_tensors():
    for k in (2, 4):
        w = lg.ReplayProjection().weights(torch.empty(k, k, device="meta"))
        assert w.shape == (k,) and w.device.type == "meta"


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="1 <= M <= 12"):
        lg.ReplayProjection().weights(torch.eye(1))
    with pytest.raises(ValueError, match="1 <= M <= 12"):
        lg.ReplayProjection().weights(torch.eye(14))
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="loss must be a scalar"):
        lg.project_replay(w * 2, w.sum(), [w])
    with pytest.raises(ValueError, match="replay_losses must be a scalar or a"):
        lg.project_replay(w.sum(), torch.ones(2, 2), [w])


def test_per_group_losses_from_per_label_losses():
    """A (1 + groups) Gramian from lg.per_label_losses over the old tasks' class groups."""
    model = make_model(2)
    x, y, xm, ym = data(0)
    groups = [[0], [1, 2], [3, 4, 5]]  # the last group has no memory samples: weight 0
    replay = lg.per_label_losses(model(xm), ym, loss="ce", groups=groups)
    out = lg.project_replay(F.cross_entropy(model(x), y), replay, model)
    assert out.weights is not None and out.weights.shape == (4,) and out.weights[3] == 0
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    ref_model = make_model(2)
    params = list(ref_model.parameters())
    jac = torch.stack(
        [flat_grad(F.cross_entropy(ref_model(x), y), params)]
        + [
            flat_grad(loss_k, params)
            for loss_k in lg.per_label_losses(ref_model(xm), ym, loss="ce", groups=groups)[:2]
        ]
    )
    torch.testing.assert_close(grads, gem_reference(jac), rtol=0, atol=1e-8)
    assert np.all((jac[1:] @ grads).numpy() >= -1e-10)
