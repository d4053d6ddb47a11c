"""Tracker: owned by the module it tracks (no global registry), or passed as tracker=."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg


class InvNorm:
    def weights(self, gramian: Tensor, /) -> Tensor:
        return (gramian.diagonal() + 1e-3).rsqrt()


def _net() -> tuple[nn.Sequential, nn.Linear, Tensor, Tensor]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh()).double()
    head = nn.Linear(6, 6).double()
    return trunk, head, torch.randn(9, 5, dtype=torch.float64), torch.randint(0, 6, (9,))


def test_the_module_owns_its_tracker() -> None:
    trunk, *_ = _net()
    assert lg.aggregation.Tracker.of(trunk) is None
    tracker = lg.aggregation.track(trunk)
    assert lg.aggregation.Tracker.of(trunk) is tracker
    assert lg.aggregation.track(trunk) is tracker  # tracking again returns the same one
    assert lg.aggregation.Tracker.of(trunk[0]) is None  # a submodule does not own it
    tracker.remove()
    assert lg.aggregation.Tracker.of(trunk) is None
    with pytest.raises(TypeError, match=r"track\(\) needs an nn.Module"):
        lg.aggregation.track([trunk])  # type: ignore[arg-type]


def test_records_only_layers_with_parameters_and_only_with_grad() -> None:
    trunk, _, x, _ = _net()
    tracker = lg.aggregation.track(trunk)
    with torch.no_grad():
        trunk(x)
    assert tracker.calls == {}
    trunk(x)
    assert [type(m).__name__ for m in tracker.calls] == ["Linear", "Linear"]
    tracker.remove()


def test_explicit_tracker_with_shared_as_parameters() -> None:
    """tracker= lets shared be a parameter list; the result equals the exact engine's."""
    trunk, head, x, y = _net()
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    tracker = lg.aggregation.track(trunk)
    try:
        losses = lg.per_label_losses(head(trunk(x)), y, loss="ce", groups=groups)
        shared = list(trunk.parameters())
        assert "track" in lg.explain_engine(losses, shared=shared)
        said = lg.explain_engine(losses, shared=shared, tracker=tracker)
        assert said.startswith("sample-Gramian engine")
        out = lg.aggregate_backward(losses, shared, InvNorm(), tracker=tracker)
        assert out.engine == "sample_gramian"
        got = [p.grad.clone() for p in shared]  # type: ignore[union-attr]
        trunk.zero_grad(set_to_none=True)
        losses = lg.per_label_losses(head(trunk(x)), y, loss="ce", groups=groups)
        ref = lg.aggregate_backward(losses, shared, InvNorm(), engine="exact")
    finally:
        tracker.remove()
    torch.testing.assert_close(out.gramian, ref.gramian)
    for a, p in zip(got, shared, strict=True):
        torch.testing.assert_close(a, p.grad)
