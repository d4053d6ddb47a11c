"""torch.compile(fullgraph=True) of a model whose forward contains a policy (inductor, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg

C = 4
F32 = torch.float32  # explicit: other test modules change the default dtype


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 16, dtype=F32), nn.ReLU(), nn.Linear(16, C, dtype=F32)
        )
        self.policy = lg.chain(
            lg.mask_unknown(),
            lg.class_weights([1.0, 2.0, 0.5, 1.0]),
            lg.eqlv2(num_classes=C),
            lg.clip_per_class(0.05),
            lg.clip_per_sample(0.1),
            lg.monitor(num_classes=C),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.policy(self.net(x), y)
        return F.binary_cross_entropy_with_logits(z, y.clamp(min=0).to(z.dtype), reduction="sum")


@pytest.mark.timeout(240)
def test_compiled_policy_fullgraph_matches_eager() -> None:
    torch.manual_seed(0)
    eager = Classifier()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True, backend="inductor")
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # the statistics change between steps: EQLv2's weights must follow
        x = torch.randn(8, 6, generator=g, dtype=F32)
        y = torch.randint(-1, 2, (8, C), generator=g)
        eager(x, y).backward()
        compiled(x, y).backward()
        for (name, p), q in zip(
            eager.named_parameters(), compiled_module.parameters(), strict=True
        ):
            assert q.grad is not None
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
            p.grad, q.grad = None, None
    state, compiled_state = eager.state_dict(), compiled_module.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert compiled_state["policy.policies.2.num_updates"] == 3


@pytest.mark.timeout(240)
def test_compiled_trunk_with_representation_engine_matches_eager() -> None:
    """Level 3 with a compiled backbone: features must leave the compiled region (compile the
    trunk, keep the head eager). See docs/integrations/compile.md for the other engines."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 8, dtype=F32), nn.Tanh())
    head = nn.Linear(8, C, dtype=F32)
    eager_trunk, eager_head = copy.deepcopy(trunk), copy.deepcopy(head)
    compiled_trunk = torch.compile(trunk, fullgraph=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 6, generator=g, dtype=F32)
    y = torch.randint(0, 2, (8, C), generator=g)
    weights = []
    for t, h in ((compiled_trunk, head), (eager_trunk, eager_head)):
        features = t(x)
        losses = lg.per_label_losses(h(features), y, loss="bce")
        out = lg.aggregate_backward(
            losses,
            shared=t,
            aggregator=lg.aggregators.UPGrad(),
            engine="representation",
            features=features,
        )
        weights.append(out.weights)
    torch.testing.assert_close(weights[0], weights[1])
    for p, q in zip(
        [*trunk.parameters(), *head.parameters()],
        [*eager_trunk.parameters(), *eager_head.parameters()],
        strict=True,
    ):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
