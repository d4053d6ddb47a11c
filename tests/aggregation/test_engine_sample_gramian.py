"""The sample-Gramian engine equals the exact engine for single-label class groups."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg


class InvNorm:
    """w_k = 1 / sqrt(G_kk + 1e-3): depends on every diagonal entry of G."""

    def weights(self, gramian: Tensor, /) -> Tensor:
        return (gramian.diagonal() + 1e-3).rsqrt()


def _mlp(c: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh()).double()
    return trunk, nn.Linear(12, c).double()


def _cnn(c: int, norm: bool = False) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, stride=2, dilation=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 10),
    ]
    if norm:
        layers.append(nn.LayerNorm(10))
    return nn.Sequential(*layers).double(), nn.Linear(10, c).double()


def _run(
    trunk: nn.Module, head: nn.Module, x: Tensor, y: Tensor, groups: Tensor, engine: str
) -> tuple[Tensor, list[Tensor]]:
    for p in [*trunk.parameters(), *head.parameters()]:
        p.grad = None
    losses = lg.per_label_losses(head(trunk(x)), y, loss="ce", groups=groups)
    out = lg.aggregate_backward(losses, shared=trunk, aggregator=InvNorm(), engine=engine)  # type: ignore[arg-type]
    assert out.engine == engine
    return out.gramian, [p.grad.clone() for p in [*trunk.parameters(), *head.parameters()]]  # type: ignore[union-attr]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("k", [2, 10, 100])
def test_sample_gramian_equals_exact(arch: str, k: int) -> None:
    c = max(k, 12)
    trunk, head = _mlp(c) if arch == "mlp" else _cnn(c)
    g = torch.Generator().manual_seed(k)
    n = 24
    x = (
        torch.randn(n, 6, generator=g, dtype=torch.float64)
        if arch == "mlp"
        else torch.randn(n, 2, 8, 8, generator=g, dtype=torch.float64)
    )
    y = torch.randint(0, c, (n,), generator=g)
    y[::5] = -100  # unknown labels
    groups = torch.arange(c) % k
    tracker = lg.aggregation.track(trunk)
    try:
        g_exact, grads_exact = _run(trunk, head, x, y, groups, "exact")
        g_sample, grads_sample = _run(trunk, head, x, y, groups, "sample_gramian")
    finally:
        tracker.remove()
    torch.testing.assert_close(g_sample, g_exact, rtol=1e-5, atol=1e-10)
    for a, b in zip(grads_sample, grads_exact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-10)


def test_sequence_linear_positions_and_auto() -> None:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 7, 9)).double()
    head = nn.Linear(9, 6).double()
    x = torch.randn(10, 4, 5, dtype=torch.float64)  # (N, T, D): the first Linear sees 4 positions
    y = torch.randint(0, 6, (10,))
    groups = [[0, 1], [2, 3], [4, 5]]
    tracker = lg.aggregation.track(trunk)
    try:
        losses = lg.per_label_losses(head(trunk(x)), y, loss="ce", groups=groups)
        assert lg.explain_engine(losses, shared=trunk).startswith("sample-Gramian")
        g_exact, grads_exact = _run(trunk, head, x, y, torch.tensor([0, 0, 1, 1, 2, 2]), "exact")
        g_sample, grads_sample = _run(
            trunk, head, x, y, torch.tensor([0, 0, 1, 1, 2, 2]), "sample_gramian"
        )
    finally:
        tracker.remove()
    torch.testing.assert_close(g_sample, g_exact)
    for a, b in zip(grads_sample, grads_exact, strict=True):
        torch.testing.assert_close(a, b)


def test_unsupported_layer_falls_back_with_warning() -> None:
    trunk, head = _cnn(5, norm=True)
    x = torch.randn(12, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (12,))
    groups = torch.tensor([0, 1, 0, 1, 2])
    tracker = lg.aggregation.track(trunk)
    try:
        g_exact, grads_exact = _run(trunk, head, x, y, groups, "exact")
        lg.aggregation.reset_warnings("sg-type:LayerNorm")
        with pytest.warns(UserWarning, match=r"LayerNorm.*exact engine"):
            g_sample, grads_sample = _run(trunk, head, x, y, groups, "sample_gramian")
    finally:
        tracker.remove()
    torch.testing.assert_close(g_sample, g_exact)
    for a, b in zip(grads_sample, grads_exact, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("option", "rows"),
    [({}, [5]), ({"memory_budget": 1}, [1, 1, 1, 1, 1]), ({"chunk_size": 2}, [2, 2, 1])],
)
def test_fallback_jacobian_is_chunked_within_the_budget(
    option: dict[str, int], rows: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layers without a per-sample rule get their J chunked by ``memory_budget`` and
    ``chunk_size`` as in the exact engine (the copy of that code once took all K rows at once)."""
    trunk, head = _cnn(5, norm=True)
    norm = trunk[-1]
    x = torch.randn(12, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (12,))
    groups = torch.arange(5)
    tracker = lg.aggregation.track(trunk)
    try:
        g_ref, grads_ref = _run(trunk, head, x, y, groups, "exact")
        seen: list[int] = []
        real_grad = torch.autograd.grad

        def spy(outputs: object, inputs: object, *args: object, **kwargs: object) -> object:
            batched = kwargs.get("is_grads_batched")
            if batched and any(i is norm.weight for i in inputs):  # type: ignore[attr-defined]
                seen.append(kwargs["grad_outputs"].shape[0])  # type: ignore[attr-defined]
            return real_grad(outputs, inputs, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(torch.autograd, "grad", spy)
        for p in [*trunk.parameters(), *head.parameters()]:
            p.grad = None
        losses = lg.per_label_losses(head(trunk(x)), y, loss="ce", groups=groups)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the LayerNorm fallback warning
            out = lg.aggregate_backward(
                losses,
                shared=trunk,
                aggregator=InvNorm(),
                engine="sample_gramian",
                **option,  # type: ignore[arg-type]
            )
        monkeypatch.undo()
    finally:
        tracker.remove()
    assert seen == rows
    torch.testing.assert_close(out.gramian, g_ref)
    grads = [p.grad for p in [*trunk.parameters(), *head.parameters()]]
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_not_applicable_reasons() -> None:
    trunk, head = _mlp(4)
    x, y = torch.randn(6, 6, dtype=torch.float64), torch.randint(0, 4, (6,))
    losses = lg.per_label_losses(head(trunk(x)), y, loss="ce")
    with pytest.raises(ValueError, match="track"):
        lg.aggregate_backward(losses, shared=trunk, aggregator=InvNorm(), engine="sample_gramian")
    assert "track" in lg.explain_engine(losses, shared=trunk)
    bn = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)).double()
    tracker = lg.aggregation.track(bn)
    try:
        losses = lg.per_label_losses(bn(x), y, loss="ce")
        assert "BatchNorm1d" in lg.explain_engine(losses, shared=bn)
    finally:
        tracker.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mb = lg.per_label_losses(head(trunk(x)), torch.randint(0, 2, (6, 4)))
        assert "cross-entropy" in lg.explain_engine(mb, shared=trunk)


def test_sample_gramian_accumulates_and_counts_policy_state_once() -> None:
    trunk, head = _mlp(6)
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randint(0, 6, (9,))
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    params = [*trunk.parameters(), *head.parameters()]
    tracker = lg.aggregation.track(trunk)
    try:
        policy = lg.monitor(num_classes=6).double()
        losses = lg.per_label_losses(policy(head(trunk(x)), y), y, loss="ce", groups=groups)
        lg.aggregate_backward(losses, shared=trunk, aggregator=InvNorm(), engine="sample_gramian")
        once = [p.grad.clone() for p in params]  # type: ignore[union-attr]
        state = {k: v.clone() for k, v in policy.state_dict().items()}
        losses = lg.per_label_losses(policy(head(trunk(x)), y), y, loss="ce", groups=groups)
        lg.aggregate_backward(losses, shared=trunk, aggregator=InvNorm(), engine="sample_gramian")
    finally:
        tracker.remove()
    for p, g in zip(params, once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)
    reference = lg.monitor(num_classes=6).double()
    lg.per_label_losses(reference(head(trunk(x)), y), y, loss="ce").sum().backward()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(state[key], value)


def test_amortized_with_sample_gramian_reuses_weights() -> None:
    trunk, head = _mlp(6)
    x, y = torch.randn(9, 6, dtype=torch.float64), torch.randint(0, 6, (9,))
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    agg = lg.aggregation.Amortized(InvNorm(), every=2)
    tracker = lg.aggregation.track(trunk)
    try:
        losses = lg.per_label_losses(head(trunk(x)), y, loss="ce", groups=groups)
        first = lg.aggregate_backward(losses, shared=trunk, aggregator=agg)
        assert first.engine == "sample_gramian"
        trunk.zero_grad(set_to_none=True)
        losses = lg.per_label_losses(head(trunk(2 * x)), y, loss="ce", groups=groups)
        ref = torch.autograd.grad(
            losses, list(trunk.parameters()), grad_outputs=first.weights, retain_graph=True
        )
        second = lg.aggregate_backward(losses, shared=trunk, aggregator=agg)
    finally:
        tracker.remove()
    assert second.gramian is None
    for p, r in zip(trunk.parameters(), ref, strict=True):
        torch.testing.assert_close(p.grad, r)


def test_compiled_tracked_trunk_matches_eager() -> None:
    """Inside torch.compile the hooks see side outputs of the compiled graph (gradient 0); the
    engine must notice and use the exact engine for those layers instead of writing zeros."""
    import warnings

    import labelgrad as lg

    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    head = torch.nn.Linear(8, 6)
    tracker = lg.aggregation.track(trunk)
    x, y = torch.randn(10, 4), torch.randint(0, 6, (10,))
    groups = [[0, 1, 2], [3, 4, 5]]
    grads = []
    for forward in (trunk, torch.compile(trunk)):
        trunk.zero_grad()
        losses = lg.per_label_losses(head(forward(x).relu()), y, loss="ce", groups=groups)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lg.aggregate_backward(losses, shared=trunk, aggregator=lg.aggregators.UPGrad())
        grads.append([p.grad.clone() for p in trunk.parameters()])
    tracker.remove()
    for eager, compiled in zip(*grads, strict=True):
        assert compiled.abs().sum() > 0
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)
