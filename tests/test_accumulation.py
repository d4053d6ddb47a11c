"""Gradient accumulation: k micro-batches inside a window equal one batch of the same samples."""

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
    model = nn.Sequential(nn.Linear(6, 8, dtype=F32), nn.Tanh(), nn.Linear(8, C, dtype=F32))
    policy = lg.chain(
        lg.mask_unknown(), lg.eqlv2(num_classes=C), lg.clip_per_sample(0.05), lg.monitor(C)
    )
    return model, policy


def batches(steps: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [
        (torch.randn(8, 6, generator=g, dtype=F32), torch.randint(-1, 2, (8, C), generator=g))
        for _ in range(steps)
    ]


def loss_of(model: nn.Module, policy: lg.Chain, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = policy(model(x), y)
    return F.binary_cross_entropy_with_logits(z, y.clamp(min=0).float(), reduction="sum")


def train(k: int | None, window: bool) -> tuple[nn.Module, lg.Chain]:
    """k=None: one batch of 8 per step; else k micro-batches with the loss divided by k."""
    model, policy = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, y in batches():
        if k is None:
            (loss_of(model, policy, x, y) / 8).backward()
        else:
            ctx = lg.accumulation_window(policy) if window else torch.enable_grad()
            with ctx:
                for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True):
                    (loss_of(model, policy, xs, ys) / 8).backward()
        opt.step()
        opt.zero_grad()
    return model, policy


# The monitor's last_norm and history hold the last micro-batch's values (documented).
PER_BATCH_ONLY = {"policies.3.last_norm", "policies.3.history", "policies.3.history_len"}


@pytest.mark.parametrize("k", [2, 4])
def test_window_of_k_micro_batches_equals_one_batch(k: int) -> None:
    ref_model, ref_policy = train(None, window=False)
    model, policy = train(k, window=True)
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ref_state = ref_policy.state_dict()
    for key, value in policy.state_dict().items():
        if key not in PER_BATCH_ONLY:
            torch.testing.assert_close(value, ref_state[key], rtol=1e-5, atol=1e-7, msg=key)
    assert ref_state["policies.1.num_updates"] == 3


def test_without_window_micro_batches_differ() -> None:
    """Why the window exists: EQLv2 would otherwise update its weights between micro-batches."""
    ref_model, _ = train(None, window=False)
    model, policy = train(4, window=False)
    assert policy.state_dict()["policies.1.num_updates"] == 12
    assert not torch.allclose(model[2].weight, ref_model[2].weight, atol=1e-5)


def test_non_finite_micro_batch_discards_the_window() -> None:
    _, policy = make()
    eql, mon = policy.members()[1], policy.members()[3]
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    y = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]])
    with lg.accumulation_window(policy):
        z = torch.zeros(2, C, requires_grad=True)
        policy(z, y).sum().backward()
        z = torch.zeros(2, C, requires_grad=True)
        (policy(z, y) * float("inf")).sum().backward()
        assert not torch.isfinite(z.grad).all()  # the overflow still reaches the caller
    assert torch.equal(eql.pos_grad, before["policies.1.pos_grad"])
    assert eql.num_updates.item() == 0
    assert mon.num_batches.item() == 0
    assert mon.num_nonfinite.item() == 1


def test_window_commits_nothing_when_the_block_raises() -> None:
    _, policy = make()
    with pytest.raises(RuntimeError, match="boom"), lg.accumulation_window(policy):
        z = torch.zeros(2, C, requires_grad=True)
        policy(z, torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]])).sum().backward()
        raise RuntimeError("boom")
    assert policy.members()[1].num_updates.item() == 0
    assert torch.equal(policy.members()[1].pos_grad, torch.zeros(C))


def test_window_bad_input() -> None:
    _, policy = make()
    with pytest.raises(TypeError, match=r"nn\.Module"), lg.accumulation_window(policy, "x"):  # type: ignore[arg-type]
        pass
    with (
        lg.accumulation_window(policy),
        pytest.raises(ValueError, match="already inside"),
        lg.accumulation_window(policy),
    ):
        pass


@pytest.mark.parametrize("k", [2, 4])
def test_row_rules_window_of_k_micro_batches_equals_one_batch(k: int) -> None:
    """skip_absent uses the union over the window: class 3 is in one micro-batch only."""
    y = torch.tensor([1, 2, 2, 1, 1, 3, 1, 2])  # class 0 absent, class 3 in one micro-batch

    def run(micro: int | None) -> nn.Module:
        model, _ = make()
        opt = lg.RowRules(
            torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9),
            rows=model[2],
            lr_scale=[1.0, 1.0, 2.0, 0.5],
            skip_absent=True,
        )
        for x, _ in batches(2):
            parts = (
                [(x, y)]
                if micro is None
                else list(zip(x.chunk(micro), y.chunk(micro), strict=True))
            )
            for xs, ys in parts:
                (F.cross_entropy(model(xs), ys, reduction="sum") / 8).backward()
                opt.observe(ys)
            opt.step()
            opt.zero_grad()
        return model

    init, _ = make()
    ref, model = run(None), run(k)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(model[2].weight[0], init[2].weight[0])  # absent everywhere
    assert not torch.equal(model[2].weight[3], init[2].weight[3])  # present in one micro-batch
