"""The engine protocol: every engine implements it, auto's choice reads Verdict codes, and an
engine added to the registry is used without touching aggregate_backward."""

from __future__ import annotations

from typing import ClassVar, get_args

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.aggregation import engines
from labelgrad.aggregation.engines import Call, Options, Prepared, Verdict, choose
from labelgrad.aggregation.engines.exact import Exact, ExactPrepared
from labelgrad.aggregation.engines.protocol import (
    EngineName,
    GramianEngineName,
    RegisteredEngineName,
)


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
        reuses_weights: ClassVar[bool] = False

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
    for p, r in zip(call.params, ref, strict=True):
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


def test_every_engine_name_has_an_engine_and_every_engine_a_name() -> None:
    registered = [e.name for e in engines.ENGINES]
    assert set(get_args(RegisteredEngineName)) == set(registered) == set(engines.REGISTERED_NAMES)
    askable = {e.name for e in engines.ENGINES if not e.reuses_weights}
    assert set(get_args(GramianEngineName)) == askable
    assert set(get_args(EngineName)) == askable | {"auto"} == set(engines.ENGINE_NAMES)
    assert [e.name for e in engines.ENGINES if e.reuses_weights] == ["cached"]


@pytest.mark.parametrize("name", get_args(EngineName))
def test_every_engine_name_is_accepted_by_engine(name: str) -> None:
    """Each name passes option validation and reaches its engine (which may then refuse)."""
    call = _call(with_features=True)

    def explain() -> str:
        return lg.explain_engine(
            call.losses,
            shared=call.shared,
            engine=name,  # type: ignore[arg-type]
            features=call.options.features,
            head=call.options.head,
            subset=call.params[:1],
        )

    if name == "sample_gramian":  # not class groups: the engine itself says why
        with pytest.raises(ValueError, match=r"^engine='sample_gramian' cannot run here: sample-"):
            explain()
        return
    said = explain()
    subset = tuple(call.params[:1])
    choice = choose(_call(with_features=True, engine=name, subset=subset))
    assert said == choice.reason
    assert choice.engine.name == ("representation" if name == "auto" else name)


def test_the_cached_engine_cannot_be_asked_for() -> None:
    call = _call()
    with pytest.raises(ValueError, match=r"^engine must be one of"):
        lg.aggregate_backward(call.losses, shared=call.shared, aggregator=Mean(), engine="cached")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("asked", "options", "names"),
    [
        ("auto", {}, ["exact", "cached", "cached", "exact", "cached"]),
        ("representation", {"with_features": True}, ["representation", *["cached"] * 2] * 2),
    ],
)
def test_the_result_names_the_engine_that_ran(
    asked: str, options: dict[str, object], names: list[str]
) -> None:
    """Cached steps of Amortized report "cached" (no Gramian), the others the Gramian engine."""
    agg = lg.aggregation.Amortized(Mean(), every=3)
    ran, reasons = [], []
    for step, _ in enumerate(names):
        call = _call(engine=asked, **options)
        w_ref = torch.full((3,), 1.0 / 3)
        ref = torch.autograd.grad(call.losses, call.params, grad_outputs=w_ref, retain_graph=True)
        out = lg.aggregate_backward(
            call.losses,
            shared=call.shared,
            aggregator=agg,
            engine=asked,  # type: ignore[arg-type]
            features=call.options.features,
            head=call.options.head,
        )
        ran.append(out.engine)
        reasons.append(out.reason)
        assert (out.gramian is None) == (out.engine == "cached"), step
        torch.testing.assert_close(out.weights, w_ref)
        for p, r in zip(call.params, ref, strict=True):
            torch.testing.assert_close(p.grad, r)
    assert ran == names
    computed = reasons[0]
    for engine, reason in zip(ran, reasons, strict=True):
        if engine == "cached":  # the engine that computes G when due, then the cache
            assert reason == f"{computed}; cached weights (Amortized)"
        else:
            assert reason == computed


def test_a_cached_choice_names_the_engine_that_computes_when_due() -> None:
    agg = lg.aggregation.Amortized(Mean(), every=2)
    first = _call()
    lg.aggregate_backward(first.losses, shared=first.shared, aggregator=agg)
    call = _call()
    cached = choose(Call(call.losses, call.shared, call.params, agg, call.options))
    assert (cached.engine.name, cached.verdict.code) == ("cached", "cached")
    assert cached.computing is not None
    assert (cached.computing.engine.name, cached.computing.verdict.code) == ("exact", "batched_vjp")
    assert choose(call).computing is None


def test_a_cached_step_still_refuses_what_no_gramian_engine_can_run() -> None:
    agg = lg.aggregation.Amortized(Mean(), every=10)
    first = _call()
    lg.aggregate_backward(first.losses, shared=first.shared, aggregator=agg)
    call = _call()
    with pytest.raises(ValueError, match=r"^engine='representation' needs features="):
        lg.aggregate_backward(
            call.losses, shared=call.shared, aggregator=agg, engine="representation"
        )
    assert int(agg.step) == 1  # the refused call counted no step


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"engine": "representation"}, r"^engine='representation' needs features= \(the"),
        ({"engine": "subset"}, r"^engine='subset' needs subset= \(the"),
        (
            {"engine": "sample_gramian"},
            r"^engine='sample_gramian' cannot run here: sample-Gramian engine not applicable: ",
        ),
    ],
)
def test_choose_raises_the_asked_engines_verdict(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        choose(_call(**options))


def test_choose_branches_on_the_verdict_code_not_its_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal whose code says "missing argument" is the whole message; any other refusal is
    prefixed with the asked engine, whatever its sentence starts with."""

    class Picky:
        name: ClassVar[str] = "picky"
        reuses_weights: ClassVar[bool] = False
        code = "odd"
        detail = "engine='picky' is odd today"

        def applies(self, call: Call) -> Verdict:
            return Verdict(self.name, False, self.code, self.detail)

        def gramian(self, call: Call) -> Prepared:  # pragma: no cover - never chosen
            raise AssertionError

        def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
            raise AssertionError  # pragma: no cover - never chosen

    picky = Picky()
    monkeypatch.setattr(engines, "ENGINES", (picky, *engines.ENGINES))
    with pytest.raises(ValueError, match=r"^engine='picky' cannot run here: engine='picky' is odd"):
        choose(_call(engine="picky"))
    picky.code, picky.detail = "no_subset", "picky needs subset= today"
    with pytest.raises(ValueError, match=r"^picky needs subset= today$"):
        choose(_call(engine="picky"))


def test_an_engine_reads_only_its_own_record() -> None:
    call = _call()
    prepared = Exact().gramian(call)
    assert isinstance(prepared, ExactPrepared)
    assert prepared.jacobian is not None and prepared.weights is None
    with pytest.raises(TypeError, match=r"^expected ExactPrepared, got Prepared$"):
        Exact().backward(call, Prepared(prepared.gramian), torch.ones(3))
