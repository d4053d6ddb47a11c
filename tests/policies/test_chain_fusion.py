"""A fused chain equals its policies applied one after the other (every order, every encoding)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import labelgrad as lg
from labelgrad.policies import GradContext

C = 4


def members() -> list[lg.Policy]:
    return [
        lg.mask_unknown(),
        lg.class_weights(torch.tensor([0.5, 2.0, 0.0, 3.0], dtype=torch.float64)),
        lg.pos_neg_weights(pos=torch.tensor([1.0, 2.0, 3.0, 0.5]), neg=0.25),
        lg.eqlv2(num_classes=C),
        lg.clip_per_class(0.7),
        lg.freeze_classes([2]),
        lg.mask(lambda t: t.positive | (t.values == 0)),
        lg.monitor(C, history=2),
        lg.schedule(lg.class_weights([2.0, 1.0, 1.0, 1.0]), start_step=1),
    ]


def sequential(policies: list[lg.Policy], grad: torch.Tensor, ctx: GradContext) -> torch.Tensor:
    for p in policies:
        grad = p.transform(grad, ctx)
    return grad


LABELS = {
    "partial multi-hot": torch.tensor([[1, -1, 0, 1], [0, 0, 1, -1], [1, 1, -1, 0]]),
    "indices": torch.tensor([1, -100, 3]),
    "soft": torch.tensor([[0.2, 0.9, -1.0, 0.5], [1.0, 0.0, 0.3, 0.7], [-1.0, 0.6, 0.1, 0.0]]),
}
ORDERS = [p for i, p in enumerate(itertools.permutations(range(9), 5)) if i % 997 == 0]


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("kind", list(LABELS))
def test_fused_chain_equals_sequential_application(order, kind):
    y = LABELS[kind]
    g = torch.Generator().manual_seed(sum(order))
    pool = members()
    fused = lg.chain(*[pool[i] for i in order])
    reference = [copy.deepcopy(pool[i]) for i in order]
    targets = lg.Targets.coerce(y, num_classes=C, like=torch.zeros(3, C)).class_last()
    for step in range(3):  # statistics and schedules move between steps
        up = torch.randn(3, 1, C, dtype=torch.float64, generator=g)
        up[0, 0, 0] = float("inf") if step == 2 else up[0, 0, 0]  # non-finite passes through
        ctx = GradContext(targets=targets, grad_scale=None, update_state=True)
        got = fused.transform(up, ctx)
        want = sequential(reference, up, ctx)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    for p, r in zip(fused.members(), reference, strict=True):
        for (k, a), (_, b) in zip(p.state_dict().items(), r.state_dict().items(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, equal_nan=True, msg=k)
