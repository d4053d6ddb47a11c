"""Mixed precision: fp16 autocast with GradScaler and bf16 autocast, on CPU.

References are float32 runs of the same model; half-precision runs must agree within the
precision of their dtype, statistics stay float32, and an overflow reaches the scaler (the step
is skipped) without poisoning the statistics.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg

C = 4
F32 = torch.float32  # explicit: other test modules change the default dtype


def make() -> tuple[nn.Module, lg.Chain]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16, dtype=F32), nn.ReLU(), nn.Linear(16, C, dtype=F32))
    policy = lg.chain(
        lg.mask_unknown(),
        lg.class_weights([1.0, 2.0, 0.5, 1.0]),
        lg.eqlv2(num_classes=C),
        lg.clip_per_class(0.05),
        lg.clip_per_sample(0.1),
        lg.monitor(num_classes=C),
    )
    return model, policy


def data(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 6, generator=g, dtype=F32), torch.randint(-1, 2, (8, C), generator=g))
        for _ in range(steps)
    ]


def run(
    dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None, steps: int = 3
) -> tuple[nn.Module, lg.Chain, list[torch.dtype]]:
    model, policy = make()
    policy.attach_grad_scaler(scaler)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    logit_dtypes = []
    for x, y in data(steps):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            z = policy(model(x), y)
        logit_dtypes.append(z.dtype)
        loss = F.binary_cross_entropy_with_logits(z.float(), y.clamp(min=0).float()) * C
        opt.zero_grad()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return model, policy, logit_dtypes


def assert_runs_close(a: tuple[nn.Module, lg.Chain], b: tuple[nn.Module, lg.Chain], tol: float):
    for p, q in zip(a[0].parameters(), b[0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)
    for (key, s), t in zip(a[1].state_dict().items(), b[1].state_dict().values(), strict=True):
        assert s.dtype == t.dtype
        torch.testing.assert_close(s, t, rtol=tol, atol=tol, msg=key)


def test_bf16_autocast_matches_float32() -> None:
    ref = run(None, None)
    model, policy, dtypes = run(torch.bfloat16, None)
    assert dtypes == [torch.bfloat16] * 3  # the gate ran on bf16 logits
    assert policy.members()[2].pos_grad.dtype == torch.float32
    assert_runs_close((model, policy), ref[:2], tol=3e-2)


def test_fp16_autocast_with_grad_scaler_matches_float32() -> None:
    ref = run(None, None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    model, policy, dtypes = run(torch.float16, scaler)
    assert dtypes == [torch.float16] * 3
    assert scaler.get_scale() == 2.0**8  # no step was skipped
    assert_runs_close((model, policy), ref[:2], tol=1e-2)


def test_fp16_scaler_attached_equals_float32_scaler_free_statistics() -> None:
    """Attached, the scaler's scale does not leak into thresholds or statistics."""
    a = run(torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0**4))
    b = run(torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert_runs_close(a[:2], b[:2], tol=1e-2)


def test_fp16_overflow_reaches_scaler_and_spares_statistics() -> None:
    # 2**24 overflows float16 at the logits: the step must be skipped, the scale lowered, the
    # statistics untouched; later steps proceed once the scale has come down.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, backoff_factor=2.0**-8)
    model, policy = make()
    policy.attach_grad_scaler(scaler)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    (x, y) = data(1)[0]
    with torch.autocast("cpu", dtype=torch.float16):
        z = policy(model(x), y)
    scaler.scale(F.binary_cross_entropy_with_logits(z.float(), y.clamp(min=0).float())).backward()
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters())
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == 2.0**16
    eql, mon = policy.members()[2], policy.members()[5]
    assert eql.num_updates.item() == 0
    assert torch.equal(eql.pos_grad, torch.zeros(C))
    assert mon.num_nonfinite.item() == 1
    # The next step (scale 2**16: the float16 gradient is finite) goes through and counts.
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        z = policy(model(x), y)
    scaler.scale(F.binary_cross_entropy_with_logits(z.float(), y.clamp(min=0).float())).backward()
    scaler.step(opt)
    scaler.update()
    assert eql.num_updates.item() == 1
    assert bool(torch.isfinite(eql.pos_grad).all())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_policy_gradient_keeps_the_logits_dtype(dtype: torch.dtype) -> None:
    z = torch.randn(4, C, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 2, (4, C))
    _, policy = make()
    out = policy(z, y)
    out.float().sum().backward()
    assert z.grad is not None
    assert z.grad.dtype == dtype
    assert bool(torch.isfinite(z.grad).all())


# Level 2 under AMP: GradScaler.step(RowRules) unscales, then the rules act on the update.
ROW_LABELS = torch.tensor([1, 2, 2, 1, 3, 3, 1, 1])  # class 0 frozen, class 3 absent below


def run_rows(dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None) -> nn.Module:
    model, _ = make()
    opt = lg.RowRules(
        torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1),
        rows=model[2],
        frozen=[0],
        skip_absent=True,
    )
    for x, _ in data(3):
        y = ROW_LABELS.clamp(max=2)  # classes 1, 2 present; 3 absent
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.observe(y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad()
    return model


@pytest.mark.parametrize("mode", ["fp16+scaler", "bf16"])
def test_row_rules_under_amp_match_float32(mode: str) -> None:
    init, _ = make()
    ref = run_rows(None, None)
    if mode == "bf16":
        model = run_rows(torch.bfloat16, None)
    else:
        model = run_rows(torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0**8))
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=2e-2, atol=2e-3)
    for c in (0, 3):  # frozen and absent rows: bitwise unchanged
        assert torch.equal(model[2].weight[c], init[2].weight[c])
        assert torch.equal(model[2].bias[c], init[2].bias[c])
    assert not torch.equal(model[2].weight[1], init[2].weight[1])


def test_row_rules_overflow_skips_the_step_and_the_state() -> None:
    model, _ = make()
    opt = lg.RowRules(
        torch.optim.AdamW(model.parameters(), lr=0.05), rows=model[2], skip_absent=True
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    before = [p.detach().clone() for p in model.parameters()]
    x, _ = data(1)[0]
    with torch.autocast("cpu", dtype=torch.float16):
        logits = model(x)
    scaler.scale(F.cross_entropy(logits.float(), ROW_LABELS)).backward()
    opt.observe(ROW_LABELS)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**24
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert len(opt.state) == 0  # no moment was created by the skipped step


# Level 3 under AMP: per-label losses of half-precision logits, aggregated with UPGrad.
def run_aggregation(
    dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None, engine: str
) -> tuple[nn.Module, list[torch.Tensor]]:
    model, _ = make()
    trunk, head = model[:2], model[2]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    weights = []
    for x, y in data(3):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            features = trunk(x)
            logits = head(features)
        losses = lg.per_label_losses(logits.float(), y.clamp(min=0), loss="bce")
        if scaler is not None:
            losses = scaler.scale(losses)
        out = lg.aggregate_backward(
            losses,
            shared=trunk,
            aggregator=lg.aggregators.UPGrad(),
            engine=engine,
            features=features if engine == "representation" else None,
            nonfinite="propagate",
        )
        weights.append(out.weights.detach())
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        opt.zero_grad()
    return model, weights


@pytest.mark.parametrize("engine", ["exact", "representation"])
@pytest.mark.parametrize("mode", ["fp16+scaler", "bf16"])
def test_aggregation_under_amp_matches_float32(engine: str, mode: str) -> None:
    ref, ref_w = run_aggregation(None, None, engine)
    if mode == "bf16":
        model, w = run_aggregation(torch.bfloat16, None, engine)
    else:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        model, w = run_aggregation(torch.float16, scaler, engine)
        assert scaler.get_scale() == 2.0**8  # no skipped step
    # UPGrad's weights do not depend on a uniform loss scale: the scaled Gramian gives the same.
    for a, b in zip(w, ref_w, strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=3e-2, atol=3e-3)


def test_aggregation_overflow_reaches_the_scaler() -> None:
    model, _ = make()
    trunk, head = model[:2], model[2]
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = data(1)[0]
    with torch.autocast("cpu", dtype=torch.float16):
        features = trunk(x)
        logits = head(features)
    losses = scaler.scale(lg.per_label_losses(logits, y.clamp(min=0), loss="bce"))
    lg.aggregate_backward(
        losses,
        shared=trunk,
        aggregator=lg.aggregators.UPGrad(),
        engine="representation",
        features=features,
        nonfinite="propagate",
    )
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**24
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
