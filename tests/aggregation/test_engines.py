"""The engine protocol: every engine implements it, auto's choice reads Verdict codes, and an
engine added to the registry is used without touching aggregate_backward."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.aggregation import engines
from labelgrad.aggregation.engines import Call, Options, Prepared, Verdict, choose


class Mean:
    def weights(self, gramian: Tensor, /) -> Tensor:
        return torch.full((gramian.shape[0],), 1.0 / gramian.shape[0], dtype=gramian.dtype)


def _call(**options: object) -> Call:
    torch.manual_seed(0)
    trunk, head = nn.Linear(4, 6), nn.Linear(6, 3)
    feats = trunk(torch.randn(5, 4))
    losses = lg.per_label_losses(head(feats), torch.randint(0, 2, (5, 3)))
    structure = lg.aggregation.loss_structure(losses)
    opts = {"features": feats, "head": head} if options.pop("with_features", False) else {}
    opts.update(options)
    return Call(
        losses, trunk, list(trunk.parameters()), Mean(), Options(structure=structure, **opts)
    )  # type: ignore[arg-type]


def test_every_engine_implements_the_protocol() -> None:
    for engine in (*engines.ENGINES, engines.CACHED):
        assert isinstance(engine.name, str)
        for method in ("applies", "gramian", "backward"):
            assert callable(getattr(engine, method))
        verdict = engine.applies(_call())
        assert isinstance(verdict, Verdict)
        assert verdict.engine == engine.name


@pytest.mark.parametrize(
    ("options", "engine", "code"),
    [
        ({}, "exact", "batched_vjp"),
        ({"with_features": True}, "representation", "closed_form"),
        ({"with_features": True, "head": None}, "representation", "batched_vjp"),
        ({"engine": "exact", "with_features": True}, "exact", "batched_vjp"),
    ],
)
def test_choice_is_a_verdict_code(options: dict[str, object], engine: str, code: str) -> None:
    choice = choose(_call(**options))
    assert (choice.engine.name, choice.verdict.code) == (engine, code)


def test_passed_over_verdicts_carry_codes_and_only_asked_ones_are_told() -> None:
    choice = choose(_call(with_features=True, head=None))
    assert [v.code for v in choice.passed_over] == ["no_head"]
    assert choice.reason == "representation engine, batched VJPs to the features (no head= given)"
    choice = choose(_call())
    codes = {v.code: v.asked for v in choice.passed_over}
    assert codes["no_features"] is False  # not asked for: not mentioned
    assert codes["not_class_groups"] is True  # the sample-Gramian engine says why not
    assert (
        "(sample-Gramian engine not applicable: the losses are not cross-entropy" in choice.reason
    )
    assert "features" not in choice.reason


def test_explain_engine_says_what_choose_decided() -> None:
    call = _call(with_features=True)
    said = lg.explain_engine(
        call.losses, shared=call.shared, features=call.options.features, head=call.options.head
    )
    assert said == choose(call).reason


def test_an_engine_added_to_the_registry_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding an engine is one class and its place in ENGINES: here w = 1/K on a zero Gramian."""

    class Zero:
        name: ClassVar[str] = "zero"

        def applies(self, call: Call) -> Verdict:
            return Verdict(self.name, True, "zero", "zero engine: G = 0")

        def gramian(self, call: Call) -> Prepared:
            k = call.losses.numel()
            return Prepared(torch.zeros(k, k))

        def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
            assert weights is not None
            torch.autograd.backward(call.losses, grad_tensors=weights.detach())

    monkeypatch.setattr(engines, "ENGINES", (Zero(), *engines.ENGINES))
    call = _call()
    ref = torch.autograd.grad(call.losses.mean(), call.params, retain_graph=True)
    out = lg.aggregate_backward(call.losses, shared=call.shared, aggregator=Mean())
    assert (out.engine, out.reason) == ("zero", "zero engine: G = 0")
    assert torch.equal(out.gramian, torch.zeros(3, 3))
    for p, r in zip(call.params, ref):
        torch.testing.assert_close(p.grad, r)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nonfinite": "ignore"}, ValueError, r"^nonfinite must be 'raise' or 'propagate'"),
        ({"memory_budget": 0}, ValueError, r"^memory_budget must be a positive int"),
        ({"memory_budget": 1.5e9}, ValueError, r"^memory_budget must be a positive int"),
        ({"chunk_size": 0}, ValueError, r"^chunk_size must be a positive int or None"),
        ({"batched": "yes"}, ValueError, r"^batched must be True, False or None"),
        ({"head": "linear"}, TypeError, r"^head must be an nn.Module"),
        ({"features": [1.0]}, TypeError, r"^features must be a tensor or None"),
        ({"tracker": object()}, TypeError, r"^tracker must be the Tracker"),
        ({"structure": "column"}, TypeError, r"^structure must be a LossStructure"),
        ({"engine": "warp"}, ValueError, r"^engine must be one of"),
    ],
)
def test_every_option_is_checked(kwargs: dict[str, object], error: type, match: str) -> None:
    call = _call()
    with pytest.raises(error, match=match):
        lg.aggregate_backward(call.losses, shared=call.shared, aggregator=Mean(), **kwargs)  # type: ignore[arg-type]


def test_structure_of_other_losses_is_refused() -> None:
    call = _call()
    other = lg.per_label_losses(torch.randn(3, 5, requires_grad=True), torch.ones(3, 5))
    with pytest.raises(ValueError, match="structure describes 5 losses, but losses has 3"):
        lg.aggregate_backward(
            call.losses,
            shared=call.shared,
            aggregator=Mean(),
            structure=lg.aggregation.loss_structure(other),
        )
