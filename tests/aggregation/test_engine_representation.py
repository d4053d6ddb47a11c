"""The representation engine (batched VJPs to the features, and its closed form) against
references from autograd at the features."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg
from _aggregation_helpers import InvNorm, Mean, batch, model


def _feature_reference(
    losses: Tensor, feats: Tensor, trunk: nn.Module, w_fn: object
) -> tuple[Tensor, list[Tensor]]:
    rows = torch.stack(
        [torch.autograd.grad(losses[k], feats, retain_graph=True)[0] for k in range(losses.numel())]
    )
    flat = rows.reshape(rows.shape[0], -1)
    g = flat @ flat.T
    w = w_fn.weights(g)  # type: ignore[attr-defined]
    grads = torch.autograd.grad(
        feats,
        list(trunk.parameters()),
        grad_outputs=torch.tensordot(w, rows, dims=1),
        retain_graph=True,
    )
    return g, list(grads)


@pytest.mark.parametrize("closed_form", [False, True])
@pytest.mark.parametrize("groups", [None, [[0, 3], [1], [2, 4]]])
def test_representation_engine_matches_reference(
    closed_form: bool, groups: list[list[int]] | None
) -> None:
    trunk, head = model()
    x, y = batch()
    feats = trunk(x)
    losses = lg.per_label_losses(head(feats), y, groups=groups)
    g_ref, trunk_ref = _feature_reference(losses, feats, trunk, InvNorm())
    head_ref = torch.autograd.grad(losses.sum(), list(head.parameters()), retain_graph=True)
    out = lg.aggregate_backward(
        losses,
        shared=trunk,
        aggregator=InvNorm(),
        features=feats,
        head=head if closed_form else None,
    )
    assert out.engine == "representation"
    assert ("closed form" in out.reason) == closed_form
    torch.testing.assert_close(out.gramian, g_ref, rtol=1e-5, atol=1e-10)
    for p, r in zip(trunk.parameters(), trunk_ref, strict=True):
        torch.testing.assert_close(p.grad, r)
    for p, r in zip(head.parameters(), head_ref, strict=True):
        torch.testing.assert_close(p.grad, r)


def test_representation_single_label_groups_is_diagonal_and_warns() -> None:
    trunk, head = model(c=4)
    x = batch()[0]
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, -100, 0, 1, 2])
    for use_head in (True, False):
        feats = trunk(x)
        losses = lg.per_label_losses(head(feats), y, loss="ce", groups=[[0, 1], [2, 3]])
        g_ref, trunk_ref = _feature_reference(losses, feats, trunk, InvNorm())
        lg.aggregation.reset_warnings("repr-diagonal")
        trunk.zero_grad(set_to_none=True)
        with pytest.warns(UserWarning, match="diagonal"):
            out = lg.aggregate_backward(
                losses,
                shared=trunk,
                aggregator=InvNorm(),
                features=feats,
                head=head if use_head else None,
            )
        torch.testing.assert_close(out.gramian, g_ref)
        assert torch.equal(out.gramian, torch.diag(out.gramian.diagonal()))
        for p, r in zip(trunk.parameters(), trunk_ref, strict=True):
            torch.testing.assert_close(p.grad, r)


def test_representation_with_policy_between_uses_batched_path() -> None:
    trunk, head = model()
    x, y = batch()
    feats = trunk(x)
    policy = lg.clip_per_sample(max_norm=0.01)
    losses = lg.per_label_losses(policy(head(feats), y), y)
    g_ref, trunk_ref = _feature_reference(losses, feats, trunk, InvNorm())
    out = lg.aggregate_backward(
        losses, shared=trunk, aggregator=InvNorm(), features=feats, head=head
    )
    assert "closed form" not in out.reason
    assert "policy" in out.reason
    torch.testing.assert_close(out.gramian, g_ref)
    for p, r in zip(trunk.parameters(), trunk_ref, strict=True):
        torch.testing.assert_close(p.grad, r)


def test_closed_form_non_finite_gramian_raises() -> None:
    trunk, head = model()
    with torch.no_grad():
        head.weight[0, 0] = float("inf")
    x, y = batch()
    feats = trunk(x)
    losses = lg.per_label_losses(head(feats), y)
    with pytest.raises(ValueError, match="not finite"):
        lg.aggregate_backward(losses, shared=trunk, aggregator=Mean(), features=feats, head=head)
