"""GradMonitor's statistics, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from _policy_helpers import make_model

pytestmark = pytest.mark.usefixtures("float64_default")


def test_monitor_changes_nothing_and_records_reference_statistics(multilabel_batch):
    x, y = multilabel_batch
    model = make_model()
    mon = lg.monitor(num_classes=4, history=2)
    z = model(x)
    upstreams = []
    for _ in range(3):
        z_in = z.detach().requires_grad_()
        up = torch.randn_like(z)
        upstreams.append(up)
        (g,) = torch.autograd.grad(mon(z_in, y), z_in, up)
        assert torch.equal(g, up)
    sq = sum(u.float().square().sum(0) for u in upstreams)
    torch.testing.assert_close(mon.sq_norm, sq)
    torch.testing.assert_close(mon.last_norm, upstreams[-1].float().norm(dim=0))
    pos = sum((u.float().abs() * (y == 1)).sum(0) for u in upstreams)
    torch.testing.assert_close(mon.pos_abs, pos)
    recent = mon.recent_norms()
    assert recent.shape == (2, 4)
    torch.testing.assert_close(recent[0], upstreams[1].float().norm(dim=0))
    torch.testing.assert_close(mon.mean_norm(), (sq / 3).sqrt())
