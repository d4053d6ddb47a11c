"""The closed-form representation engine: which losses keep it, and why the others do not.

Issue 14's acceptance: ``losses * 2.0`` and ``losses.clone()`` keep the closed form (with the
Gramian of the scaled losses); operations that mix the labels drop it and explain_engine says
which operation did.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg


class InvNorm:
    def weights(self, gramian: Tensor, /) -> Tensor:
        return gramian.diagonal().clamp_min(1e-12).rsqrt()


def _model() -> tuple[nn.Module, nn.Linear, Tensor, Tensor]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh()).double()
    head = nn.Linear(8, 4).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    return trunk, head, x, torch.randint(0, 2, (10, 4))


def _reference(losses: Tensor, feats: Tensor, trunk: nn.Module) -> tuple[Tensor, list[Tensor]]:
    rows = torch.stack(
        [torch.autograd.grad(losses[k], feats, retain_graph=True)[0] for k in range(len(losses))]
    )
    flat = rows.reshape(len(losses), -1)
    g = flat @ flat.T
    w = InvNorm().weights(g)
    grads = torch.autograd.grad(
        feats, list(trunk.parameters()), torch.tensordot(w, rows, 1), retain_graph=True
    )
    return g, list(grads)


CLOSED = "representation engine, closed form"
KEEP: dict[str, Callable[[Tensor], Tensor]] = {
    "losses * 2.0": lambda t: t * 2.0,
    "losses.clone()": lambda t: t.clone(),
    "per-label constant weights": lambda t: t * torch.tensor([1.0, 2.0, 0.5, 3.0]).double(),
}
DROP: dict[str, tuple[Callable[[Tensor], Tensor], str]] = {
    "flip": (lambda t: t.flip(0), "FlipBackward0 between lg.per_label_losses"),
    "index": (lambda t: t[[1, 0, 3, 2]], "IndexBackward0 between lg.per_label_losses"),
    "mix": (lambda t: t + t.sum() / 10, "combines the losses with another tensor"),
}


@pytest.mark.parametrize("op", list(KEEP))
def test_elementwise_operations_keep_the_closed_form(op: str) -> None:
    trunk, head, x, y = _model()
    feats = trunk(x)
    losses = KEEP[op](lg.per_label_losses(head(feats), y))
    assert lg.explain_engine(losses, features=feats, head=head).startswith(CLOSED)
    g_ref, grads_ref = _reference(losses, feats, trunk)
    out = lg.aggregate_backward(losses, trunk, InvNorm(), features=feats, head=head)
    assert out.reason.startswith(CLOSED)
    torch.testing.assert_close(out.gramian, g_ref)
    for p, r in zip(trunk.parameters(), grads_ref, strict=True):
        torch.testing.assert_close(p.grad, r)


@pytest.mark.parametrize("op", list(DROP))
def test_mixing_operations_take_the_batched_path_and_say_why(op: str) -> None:
    trunk, head, x, y = _model()
    feats = trunk(x)
    transform, why = DROP[op]
    losses = transform(lg.per_label_losses(head(feats), y))
    said = lg.explain_engine(losses, features=feats, head=head)
    assert said.startswith("representation engine, batched VJPs to the features (")
    assert why in said
    g_ref, grads_ref = _reference(losses, feats, trunk)
    out = lg.aggregate_backward(losses, trunk, InvNorm(), features=feats, head=head)
    assert out.reason == said
    torch.testing.assert_close(out.gramian, g_ref)
    for p, r in zip(trunk.parameters(), grads_ref, strict=True):
        torch.testing.assert_close(p.grad, r)


def test_explicit_structure_restores_the_closed_form() -> None:
    """``structure=`` passes what per_label_losses knows explicitly (here, past a reshape)."""
    trunk, head, x, y = _model()
    feats = trunk(x)
    made = lg.per_label_losses(head(feats), y)
    losses = made.reshape(2, 2).reshape(4)  # views the walk does not follow
    assert "ViewBackward0" in lg.explain_engine(losses, features=feats, head=head)
    structure = lg.aggregation.loss_structure(made)
    said = lg.explain_engine(losses, features=feats, head=head, structure=structure)
    assert said.startswith(CLOSED)
    g_ref, _ = _reference(losses, feats, trunk)
    out = lg.aggregate_backward(
        losses, trunk, InvNorm(), features=feats, head=head, structure=structure
    )
    torch.testing.assert_close(out.gramian, g_ref)


def test_not_a_linear_head_is_said() -> None:
    trunk, head, x, y = _model()
    feats = trunk(x)
    losses = lg.per_label_losses(head(feats), y)
    said = lg.explain_engine(losses, features=feats, head=nn.Sequential(head))
    assert "head is a Sequential, not an nn.Linear" in said


def test_a_parameter_inside_the_loss_still_gets_the_plain_gradient() -> None:
    """The backward may start at the logits only where nothing learnable sits in the loss."""
    trunk, head, x, y = _model()
    scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def loss(z: Tensor, t: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(z * scale, t, reduction="none")

    feats = trunk(x)
    losses = lg.per_label_losses(head(feats), y, loss=loss)
    ref_scale = torch.autograd.grad(losses.sum(), scale, retain_graph=True)[0]
    ref_head = torch.autograd.grad(losses.sum(), list(head.parameters()), retain_graph=True)
    out = lg.aggregate_backward(losses, trunk, InvNorm(), features=feats, head=head)
    assert out.reason.startswith(CLOSED)
    torch.testing.assert_close(scale.grad, ref_scale)
    for p, r in zip(head.parameters(), ref_head, strict=True):
        torch.testing.assert_close(p.grad, r)
