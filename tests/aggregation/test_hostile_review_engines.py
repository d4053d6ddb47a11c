"""Hostile review of ``lg.aggregate_backward``'s engines (HOSTILE.md, level 3), by a reviewer
who did not write them.

For every engine (and ``"auto"``) on graphs that are not what they seem (a shared parameter
reached by one label only, head parameters among the shared ones, an empty batch, an
all-unknown batch, K = 1, float32), the independent reference is per-loss autograd: the shared
parameters must receive ``J^T w`` with ``w`` the result's weights, the weights must be the
aggregator's answer on the result's Gramian, and every other parameter the plain gradient of
``losses.sum()``. Also ``lg.report.label_gramian`` on hostile arguments.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg
from _aggregation_helpers import one_thread

A = lg.aggregators


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@dataclass
class Setup:
    trunk: nn.Module
    head: nn.Module
    shared: list[nn.Parameter]
    losses: Callable[[], tuple[Tensor, Tensor]]  # (losses, features)


def _build(variant: str, loss: str = "bce") -> Setup:
    torch.manual_seed(0)
    dtype = torch.float32 if variant == "float32" else torch.float64
    trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh()).to(dtype)
    head = nn.Linear(6, 4).to(dtype)
    if loss == "ce":
        lg.aggregation.track(trunk)
    n = 0 if variant == "empty_batch" else 9
    x = torch.randn(n, 5, dtype=dtype)
    y: Tensor = torch.randint(0, 4, (n,)) if loss == "ce" else torch.randint(0, 2, (n, 4))
    if variant == "all_unknown":
        y = torch.full((n,), -100) if loss == "ce" else torch.full((n, 4), -1)
    shared = list(trunk.parameters())
    extra = nn.Parameter(torch.randn(3, dtype=dtype))

    def losses() -> tuple[Tensor, Tensor]:
        f = trunk(x)
        out = lg.per_label_losses(head(f), y, loss=loss)
        if variant == "one_label_param":  # a shared parameter only label 0 reaches
            out = out + torch.cat([(extra**2).sum().reshape(1), torch.zeros_like(out[1:])])
        if variant == "k1":
            out = out[:1] * 2.0
        return out, f

    if variant == "one_label_param":
        shared = [*shared, extra]
    if variant == "head_in_shared":
        shared = [*shared, *head.parameters()]
    return Setup(trunk, head, shared, losses)


def _jacobian(losses: Tensor, params: list[nn.Parameter]) -> Tensor:
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def _grads(params: list[nn.Parameter]) -> Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


def _all_params(s: Setup) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in [*s.shared, *s.trunk.parameters(), *s.head.parameters()]:
        seen.setdefault(id(p), p)
    return list(seen.values())


def _engine_kwargs(engine: str, s: Setup, features: Tensor) -> dict[str, Any]:
    if engine == "representation":
        return {"features": features, "head": s.head}
    if engine == "representation_no_head":
        return {"engine": "representation", "features": features}
    if engine == "subset":
        return {"subset": list(s.trunk[2].parameters())}
    return {}


VARIANTS = ["plain", "one_label_param", "head_in_shared", "empty_batch", "all_unknown", "k1"]
VARIANTS += ["float32"]
ENGINES = ["auto", "exact", "representation", "representation_no_head", "subset"]
AGGREGATORS = ["UPGrad", "MGDA", "IMTLG", "Mean", "DualProj", "CAGrad"]  # deterministic


def _runs(engine: str, variant: str) -> bool:
    # The representation engine documents that the shared parameters must compute the
    # features: head parameters or a parameter outside the trunk are refused (tested below).
    off_features = variant in ("head_in_shared", "one_label_param")
    return not (engine.startswith("representation") and off_features)


@pytest.mark.parametrize("aggregator", AGGREGATORS)
@pytest.mark.parametrize(
    ("engine", "variant"), [(e, v) for e in ENGINES for v in VARIANTS if _runs(e, v)]
)
def test_shared_gradient_is_jt_w_from_per_loss_autograd(
    engine: str, variant: str, aggregator: str
) -> None:
    s = _build(variant)
    agg = A.available()[aggregator]()
    losses, features = s.losses()
    jac = _jacobian(losses, s.shared)
    params = _all_params(s)
    others = [p for p in params if all(p is not q for q in s.shared)]
    plain = (
        torch.autograd.grad(losses.sum(), others, retain_graph=True, allow_unused=True)
        if others
        else ()
    )
    kwargs = {"engine": engine, **_engine_kwargs(engine, s, features)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the representation engine's diagonal-CE advice
        result = lg.aggregate_backward(losses, shared=s.shared, aggregator=agg, **kwargs)
    w = result.weights
    assert w is not None and result.gramian is not None
    tol = 1e-5 if variant == "float32" else 1e-10
    # The weights are the aggregator's answer on the Gramian the engine reports.
    fresh = A.available()[aggregator]().weights(result.gramian)
    assert torch.allclose(w, fresh, rtol=tol, atol=tol), (w, fresh)
    # The shared parameters received J^T w (J from per-loss autograd).
    want = jac.T @ w.to(jac.dtype)
    got = _grads(s.shared)
    scale = float(want.abs().max()) or 1.0
    assert float((got - want).abs().max()) <= tol * scale, (engine, variant)
    # Every other parameter received the plain gradient of losses.sum().
    for p, g in zip(others, plain, strict=True):
        expected = torch.zeros_like(p) if g is None else g
        actual = torch.zeros_like(p) if p.grad is None else p.grad
        assert torch.allclose(actual, expected, rtol=tol, atol=tol)
    if result.engine == "exact":
        g_ref = jac @ jac.T
        g_scale = float(g_ref.abs().max()) or 1.0
        assert float((result.gramian - g_ref).abs().max()) <= tol * g_scale


@pytest.mark.parametrize("variant", ["plain", "empty_batch", "all_unknown"])
def test_sample_gramian_engine_equals_per_loss_autograd(variant: str) -> None:
    s = _build(variant, loss="ce")
    agg = A.UPGrad()
    losses, _ = s.losses()
    jac = _jacobian(losses, s.shared)
    result = lg.aggregate_backward(losses, shared=s.trunk, aggregator=agg, engine="sample_gramian")
    assert result.engine == "sample_gramian" and result.gramian is not None
    g_ref = jac @ jac.T
    assert torch.allclose(result.gramian, g_ref, rtol=1e-9, atol=1e-14)
    assert result.weights is not None
    assert torch.allclose(_grads(s.shared), jac.T @ result.weights, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("engine", ["exact", "auto"])
def test_a_jacobian_aggregator_gets_the_per_loss_jacobian(engine: str) -> None:
    s = _build("plain")
    losses, _ = s.losses()
    jac = _jacobian(losses, s.shared)
    torch.manual_seed(3)
    want = A.GradDrop().aggregate(jac)
    torch.manual_seed(3)
    lg.aggregate_backward(losses, shared=s.shared, aggregator=A.GradDrop(), engine=engine)
    assert torch.allclose(_grads(s.shared), want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("engine", ["representation", "representation_no_head"])
@pytest.mark.parametrize("variant", ["head_in_shared", "one_label_param"])
def test_representation_refuses_params_off_the_features(engine: str, variant: str) -> None:
    s = _build(variant)
    losses, features = s.losses()
    kwargs = {"engine": "representation", **_engine_kwargs(engine, s, features)}
    with pytest.raises(ValueError, match="upstream of features"):
        lg.aggregate_backward(losses, shared=s.shared, aggregator=A.UPGrad(), **kwargs)


def test_a_frozen_parameter_named_in_shared_is_a_one_line_error() -> None:
    s = _build("plain")
    s.trunk[0].bias.requires_grad_(False)
    losses, _ = s.losses()
    with pytest.raises(ValueError, match=r"shared\[1\].*requires_grad=True") as info:
        lg.aggregate_backward(losses, shared=s.shared, aggregator=A.UPGrad())
    assert "\n" not in str(info.value)


# --- lg.report.label_gramian ------------------------------------------------------------------


def _label_losses() -> tuple[nn.Linear, Tensor]:
    torch.manual_seed(0)
    net = nn.Linear(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    return net, lg.per_label_losses(net(x), torch.randint(0, 2, (6, 4)))


def test_label_gramian_counts_a_repeated_parameter_once() -> None:
    # Before: [w, w, b] counted w's block of J twice (a Gramian of other gradients, silently).
    net, losses = _label_losses()
    jac = _jacobian(losses, list(net.parameters()))
    got = lg.report.label_gramian(losses, [net.weight, net.weight, net.bias])
    assert torch.allclose(got, jac @ jac.T, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("how", ["detached", "no_grad"])
def test_label_gramian_refuses_losses_without_a_graph(how: str) -> None:
    # Before: torch's "element 0 of tensors does not require grad" from inside autograd.
    net, _ = _label_losses()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (6, 4))
    if how == "detached":
        losses = lg.per_label_losses(net(x).detach(), y)
    else:
        with torch.no_grad():
            losses = lg.per_label_losses(net(x), y)
    with pytest.raises(ValueError, match="losses has no autograd graph"):
        lg.report.label_gramian(losses, net.parameters())


def test_label_gramian_refuses_empty_params() -> None:
    # Before: torch's "`inputs` argument to `grad()` cannot be empty".
    _, losses = _label_losses()
    with pytest.raises(ValueError, match="params is empty"):
        lg.report.label_gramian(losses, [])


def test_label_gramian_refuses_losses_that_reach_none_of_params() -> None:
    _, losses = _label_losses()
    other = nn.Linear(2, 2).double()
    with pytest.raises(ValueError, match="reaches none"):
        lg.report.label_gramian(losses, other.parameters())


@pytest.mark.parametrize("arch", ["linear", "conv", "sequence"])
def test_sample_gramian_engine_on_an_empty_batch(arch: str) -> None:
    # Before: "cannot reshape tensor of 0 elements into shape [0, -1, 5]" (a -1 with N = 0).
    torch.manual_seed(0)
    trunk: nn.Module
    if arch == "conv":
        trunk = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(100, 6))
        x = torch.randn(0, 2, 5, 5)
    else:
        trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
        x = torch.randn(0, 3, 5) if arch == "sequence" else torch.randn(0, 5)
    head = nn.Linear(6, 4)
    lg.aggregation.track(trunk)
    z = head(trunk(x))
    if arch == "sequence":
        z = z.transpose(1, 2)  # (N, C, T)
    y = torch.zeros(z.shape[:1] + z.shape[2:], dtype=torch.long)
    losses = lg.per_label_losses(z, y, loss="ce")
    result = lg.aggregate_backward(
        losses, shared=trunk, aggregator=A.UPGrad(), engine="sample_gramian"
    )
    assert result.engine == "sample_gramian" and result.gramian is not None
    assert bool((result.gramian == 0).all())
    for p in trunk.parameters():
        assert p.grad is not None and bool((p.grad == 0).all())


def test_a_gramian_overflow_from_finite_gradients_names_the_overflow() -> None:
    # Finite float32 gradients of norm ~1e20 overflow G = J J^T (3.4e38): the error must not
    # claim an inf/NaN gradient only. (With nonfinite="propagate" the plain gradient, finite
    # here, is written: documented, and left as it is.)
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    losses = lg.per_label_losses(net(torch.randn(4, 3)), torch.randint(0, 2, (4, 2)))
    losses = losses * torch.tensor([1.0, 1e21])
    with pytest.raises(ValueError, match="overflows its dtype"):
        lg.aggregate_backward(losses, shared=net, aggregator=A.UPGrad(), engine="exact")
