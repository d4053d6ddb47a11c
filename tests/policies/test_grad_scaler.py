"""Under a GradScaler, norm thresholds and statistics act on the unscaled gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg


def make_policy() -> lg.Chain:
    return lg.chain(
        lg.mask_unknown(),
        lg.eqlv2(num_classes=4),
        lg.clip_per_class(0.05),
        lg.clip_per_sample(0.1),
        lg.monitor(num_classes=4, history=3),
    )


def run(scaler: torch.amp.GradScaler | None, steps: int = 4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    policy = make_policy().attach_grad_scaler(scaler)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=g)
        y = torch.randint(-1, 2, (8, 4), generator=g)
        z = policy(model(x), y)
        loss = F.binary_cross_entropy_with_logits(z, y.clamp(min=0).float(), reduction="sum")
        opt.zero_grad()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return model, policy


def test_scaled_and_unscaled_runs_agree():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    assert scaler.is_enabled()
    plain_model, plain_policy = run(None)
    scaled_model, scaled_policy = run(scaler)
    for a, b in zip(plain_model.parameters(), scaled_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (k, a), b in zip(
        plain_policy.state_dict().items(), scaled_policy.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_without_attaching_the_scaler_clipping_is_scale_dependent():
    """The reason attach_grad_scaler exists: the scale would otherwise leak into thresholds."""
    plain_model, _ = run(None, steps=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    policy = make_policy()  # no scaler attached
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, generator=g), torch.randint(-1, 2, (8, 4), generator=g)
    loss = F.binary_cross_entropy_with_logits(
        policy(model(x), y), y.clamp(min=0).float(), reduction="sum"
    )
    scaler.scale(loss).backward()
    scaler.step(opt)
    assert not torch.allclose(model[2].weight, plain_model[2].weight, atol=1e-4)


def test_overflow_reaches_the_scaler_and_spares_statistics():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    model = nn.Linear(3, 4)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    policy = make_policy().attach_grad_scaler(scaler)
    z = policy(model(torch.randn(2, 3)), torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]]))
    loss = (z * torch.tensor(float("inf"))).sum()
    scaler.scale(loss).backward()
    scaler.step(opt)  # must be skipped: the inf/NaN reached the parameters' gradients
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() < 2.0**12
    eq, mon = policy.policies[1], policy.policies[4]
    assert eq.num_updates.item() == 0
    assert mon.num_nonfinite.item() == 1


def test_attach_rejects_non_scalers():
    with pytest.raises(TypeError, match=r"scaler must be a torch\.amp\.GradScaler"):
        lg.clip_per_class(1.0).attach_grad_scaler(object())
