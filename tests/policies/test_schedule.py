"""schedule: switching a policy by step, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg

pytestmark = pytest.mark.usefixtures("float64_default")


def test_schedule_switches_at_start_and_end_step():
    policy = lg.schedule(lg.class_weights([3.0, 3.0]), start_step=2, end_step=4)
    seen = []
    for _ in range(5):
        z = torch.zeros(1, 2, requires_grad=True)
        policy(z, torch.tensor([0])).sum().backward()
        seen.append(z.grad[0, 0].item())
    assert seen == [1.0, 1.0, 3.0, 3.0, 1.0]
    restored = lg.schedule(lg.class_weights([3.0, 3.0]), start_step=2, end_step=4)
    restored.load_state_dict(policy.state_dict())
    assert restored.num_steps.item() == 5
