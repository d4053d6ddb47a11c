"""HOSTILE.md classes 3 (precision, magnitude) and 4 (state, aliasing), and the diagnostics, for
every public aggregator.

Every test iterates ``lg.aggregators.available()``: a new aggregator is covered automatically,
and the tables below must classify it (a test fails until they do). References are independent:
a scaled Gramian against the unscaled one (each aggregator's documented homogeneity), a fresh
instance fed the same sequence, and the float64 answer for half precision.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import labelgrad as lg
from _aggregation_helpers import one_thread

A = lg.aggregators
NAMES = sorted(A.available())
GRAMIAN_NAMES = [n for n in NAMES if issubclass(A.available()[n], A.GramianWeighting)]
DTYPES = [torch.float32, torch.float64]
SCALES = [1e-30, 1e-10, 1e10, 5e9]

#: weights(c G) = c ** degree * weights(G) for c > 0 (the documented homogeneity); None: the
#: weighting is not homogeneous (a step size in G's units), so only finiteness is checked.
DEGREE: dict[str, float | None] = {
    "AlignedMTL": 0,
    "CAGrad": 0,  # above norm_eps (TorchJD's trace threshold: below it G counts as zero)
    "CRMOGM": 0,
    "Constant": 0,
    "DualProj": 0,  # above norm_eps, as CAGrad
    "FairGrad": -0.5,  # G w = w^(-1/alpha), alpha = 1
    "GradVac": 0,
    "IMTLG": 0,
    "Krum": 0,
    "MGDA": 0,
    "Mean": 0,
    "MoDo": None,  # one projected step of size gamma on G: not homogeneous (the paper's method)
    "NashMTL": 0,  # up to its cap max_norm on the update's norm (see expected())
    "PCD": 0,  # with eps / c (eps is in the units of |g|^2: see expected())
    "PCGrad": 0,
    "Random": 0,
    "SDMGrad": 0,
    "Sum": 0,
    "UPGrad": 0,  # above norm_eps, as CAGrad
}
#: Weightings whose documented ``norm_eps`` is an absolute threshold on ``trace(G)``.
TRACE_THRESHOLD = {"CAGrad", "DualProj", "UPGrad"}
#: (K, P) aggregate(c J) = c ** degree * aggregate(J); None: not homogeneous.
J_DEGREE: dict[str, float | None] = {
    "ConFIG": 1,
    "ExcessMTL": None,  # exponentiated-gradient step on risks in J's units (the paper's method)
    "GradDrop": 1,  # the drop decisions depend on signs and ratios only
    "TrimmedMean": 1,
}
#: Aggregators that solve an optimization problem: they have ``diagnostics``.
SOLVING = {"CAGrad", "CRMOGM", "DualProj", "FairGrad", "MGDA", "NashMTL", "PCD", "UPGrad"}
NOT_SOLVING = {
    "AlignedMTL", "ConFIG", "Constant", "ExcessMTL", "GradDrop", "GradVac", "IMTLG", "Krum",
    "Mean", "MoDo", "PCGrad", "Random", "SDMGrad", "Sum", "TrimmedMean",
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def make(name: str, seed: int = 0) -> A.Aggregator:
    """A fresh instance with its paper's defaults (random ones with a seeded generator)."""
    cls = A.available()[name]
    if "generator" in inspect.signature(cls).parameters:
        return cls(generator=torch.Generator().manual_seed(seed))  # type: ignore[call-arg]
    return cls()


def jacobian(k: int = 4, p: int = 7, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """Conflicting rows of comparable norms (no row dominates, none is zero)."""
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(k, p, generator=g, dtype=torch.float64)
    j[1] = -0.6 * j[0] + 0.5 * j[1]  # a conflict
    return j.to(dtype)


def run(agg: A.Aggregator, j: Tensor) -> Tensor:
    """The aggregator's answer on J: weights(J J^T) or aggregate(J)."""
    if isinstance(agg, A.JacobianAggregator):
        return agg.aggregate(j)
    return agg.weights(j @ j.T)


def test_tables_classify_every_aggregator() -> None:
    assert set(GRAMIAN_NAMES) == set(DEGREE)
    assert set(NAMES) - set(GRAMIAN_NAMES) == set(J_DEGREE)
    assert set(NAMES) == SOLVING | NOT_SOLVING
    assert not SOLVING & NOT_SOLVING


# --- 3. Precision and magnitude ------------------------------------------------------------


def expected(name: str, agg: A.GramianWeighting, base: Tensor, g: Tensor, c: float) -> Tensor:
    """What weights(c G) must be, from the weights of G (``base``) and the documentation."""
    degree = DEGREE[name]
    assert degree is not None
    if name in TRACE_THRESHOLD and float(g.double().trace()) * c < agg.norm_eps:  # type: ignore[union-attr]
        return make(name).weights(torch.zeros_like(g))  # documented: G counts as zero
    if name == "PCD":  # documented: eps is in the units of |g|^2
        return A.PCD(eps=agg.eps / c).weights(g.double())  # type: ignore[union-attr]
    w = base.double() * c**degree
    if name == "NashMTL":  # documented cap: alpha rescaled to |J^T alpha| = max_norm
        w = A.NashMTL(max_norm=0).weights(g.double())  # uncapped
        norm = float(w @ (c * g.double()) @ w) ** 0.5
        w = w * min(1.0, agg.max_norm / norm)  # type: ignore[union-attr]
    return w


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", SCALES)
@pytest.mark.parametrize("name", GRAMIAN_NAMES)
def test_weights_of_scaled_gramian_follow_the_documented_homogeneity(
    name: str, c: float, dtype: torch.dtype
) -> None:
    j = jacobian()
    g64 = j @ j.T
    g = g64.to(dtype)
    base = make(name).weights(g64)
    scaled = (c * g64).to(dtype)  # scaled in float64, then rounded: the same G up to dtype
    agg = make(name)
    w = agg.weights(scaled)
    assert w.dtype == dtype and bool(w.isfinite().all()), (name, c, w)
    if DEGREE[name] is None:
        assert name == "MoDo"
        # Not homogeneous, but on the simplex at every scale (the bug: all zeros at 5e9).
        assert bool((w >= 0).all()) and abs(float(w.double().sum()) - 1) < 1e-5, w
        return
    want = expected(name, agg, base, g, c)  # type: ignore[arg-type]
    # float32 G carries 6e-8 relative rounding; the solvers amplify it by cond(G) ~ 10.
    rtol = 1e-4 if dtype == torch.float32 else 1e-7
    want = want.double()
    scale = want.abs().max().clamp(min=torch.finfo(torch.float64).tiny)
    error = float((w.double() - want).abs().max() / scale)
    assert error <= rtol, (name, c, dtype, w, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", SCALES)
@pytest.mark.parametrize("name", sorted(J_DEGREE))
def test_jacobian_aggregators_follow_the_documented_homogeneity(
    name: str, c: float, dtype: torch.dtype
) -> None:
    j = jacobian()
    if c < 1e-20 and dtype == torch.float32:
        c = 1e-18  # c J itself must be representable (J J^T is never formed here)
    out = make(name).aggregate((c * j).to(dtype))
    assert out.dtype == dtype and bool(out.isfinite().all()), (name, c, out)
    degree = J_DEGREE[name]
    if degree is None:
        return
    want = make(name).aggregate(j.to(dtype)).double() * c**degree  # same dtype: same draws
    rtol = 1e-4 if dtype == torch.float32 else 1e-7
    assert float((out.double() - want).abs().max() / want.abs().max()) <= rtol, (name, c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_zero_and_half_precision_inputs_give_finite_answers(name: str, dtype: torch.dtype) -> None:
    j = jacobian(k=3)
    zero = torch.zeros_like(j, dtype=dtype)
    for x in (zero, j.to(dtype)):
        out = run(make(name), x)
        assert out.dtype == dtype and bool(out.isfinite().all()), (name, dtype, out)
    if dtype in (torch.float16, torch.bfloat16) and name in DEGREE and name not in ("Random",):
        # Half-precision G is solved in float32: the answer is the float32 one, rounded.
        g = (j @ j.T).to(dtype)
        want = make(name).weights(g.float()).to(dtype)
        torch.testing.assert_close(make(name).weights(g), want, rtol=0, atol=0)


def test_modo_near_5e9_float32_is_not_all_zero() -> None:
    # Regression: the simplex projection computed (u_1 - 1) / 1 with u_1 ~ -5e8: the -1 vanished.
    g = torch.tensor([[5e9, 4.9e9], [4.9e9, 5.1e9]], dtype=torch.float32)
    w = A.MoDo().weights(g)
    assert abs(float(w.sum()) - 1) < 1e-6 and bool((w >= 0).all()), w
    w64 = A.MoDo().weights(g.double())
    torch.testing.assert_close(w.double(), w64, atol=1e-6, rtol=0)


def test_sdmgrad_on_a_float16_zero_gramian_is_finite() -> None:
    # Regression: 1e-8 is 0 in float16, so 0 / (0 + 1e-8) was NaN.
    w = A.SDMGrad().weights(torch.zeros(3, 3, dtype=torch.float16))
    torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=torch.float16))


def test_nashmtl_float32_tiny_gramian_matches_float64() -> None:
    # Regression: |G|_F of entries 1e-30 underflowed in float32 (squares 1e-60), so G was
    # "normalized" by the smallest normal number and the balance solved on a different problem.
    j = jacobian()
    g = 1e-30 * (j @ j.T)
    w32 = A.NashMTL(max_norm=0).weights(g.float())
    w64 = A.NashMTL(max_norm=0).weights(g)
    torch.testing.assert_close(w32.double(), w64, rtol=1e-4, atol=0)


# --- 4. Returned tensors never alias state ----------------------------------------------------


def feed(agg: A.Aggregator, steps: int, start: int = 0) -> list[Tensor]:
    return [run(agg, jacobian(seed=start + i)).clone() for i in range(steps)]


@pytest.mark.parametrize("name", NAMES)
def test_editing_the_returned_tensor_changes_nothing(name: str) -> None:
    edited, reference = make(name), make(name)
    for i in range(3):
        out = run(edited, jacobian(seed=i))
        want = run(reference, jacobian(seed=i))
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        # The tensors (a wrapper's extra state is the wrapped type's name, not a tensor).
        tensors = {k: v for k, v in edited.state_dict().items() if isinstance(v, torch.Tensor)}
        saved = {k: v.clone() for k, v in tensors.items()}
        out.mul_(100.0).add_(float("nan"))  # a caller rescaling in place (and worse)
        for key, value in tensors.items():
            torch.testing.assert_close(value, saved[key], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "amortized"])
@pytest.mark.parametrize("name", ["CRMOGM", "MoDo", "SDMGrad", "GradVac", "NashMTL", "UPGrad"])
def test_editing_aggregation_result_weights_changes_nothing(name: str, wrap: bool) -> None:
    def step(agg: object, seed: int, edit: bool) -> Tensor:
        torch.manual_seed(seed)
        net = torch.nn.Linear(5, 3)
        losses = lg.per_label_losses(net(torch.randn(8, 5)), torch.randint(0, 2, (8, 3)))
        result = lg.aggregate_backward(losses, shared=net, aggregator=agg)
        assert result.weights is not None
        weights = result.weights.clone()
        if edit:
            result.weights.mul_(100.0)
        return weights

    def build() -> object:
        agg = make(name)
        return lg.aggregation.Amortized(agg, every=2) if wrap else agg  # type: ignore[arg-type]

    edited, reference = build(), build()
    for seed in range(4):  # steps 1 and 3 reuse the Amortized cache
        torch.testing.assert_close(
            step(edited, seed, edit=True), step(reference, seed, edit=False), rtol=0, atol=0
        )


# --- 4 / 11. State and diagnostics ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_solving_aggregators_have_diagnostics(name: str) -> None:
    agg = make(name)
    feed(agg, 2)
    if name in SOLVING:
        assert isinstance(agg.diagnostics, A.SolverDiagnostics)
        assert int(agg.diagnostics.calls) == 2
        assert int(agg.diagnostics.problems) >= 2
    else:
        assert not hasattr(agg, "diagnostics")


@pytest.mark.parametrize("name", NAMES)
def test_reset_zeroes_every_counter_and_restarts(name: str) -> None:
    agg = make(name)
    feed(agg, 3)
    agg.reset()
    for buffer_name, buffer in agg.named_buffers():
        if not buffer.is_floating_point() and buffer.dim() == 0:  # a counter
            assert int(buffer) == 0, buffer_name
    if name not in ("PCGrad", "Random", "GradDrop", "GradVac"):  # their generator moved on
        torch.testing.assert_close(feed(agg, 3, start=5), feed(make(name), 3, start=5))


def test_pcd_counts_fallbacks_in_its_diagnostics_and_reset_zeroes_them() -> None:
    # Regression: PCD had no diagnostics, and its saved ``fallbacks`` buffer survived reset().
    agg = A.PCD()
    agg.diagnostics.fallbacks.fill_(3)  # as after three hard problems
    assert int(agg.fallbacks) == 3 and "fallbacks" not in agg.state_dict()
    agg.reset()
    assert int(agg.fallbacks) == 0
    # An old checkpoint with the counter still loads.
    old = {**A.PCD().state_dict(), "fallbacks": torch.tensor(2)}
    A.PCD().load_state_dict(old)


STATEFUL = ["CRMOGM", "ExcessMTL", "GradVac", "MoDo", "NashMTL", "PCD", "SDMGrad"]


def generator_state(agg: A.Aggregator) -> Tensor | None:
    gen = getattr(agg, "generator", None)
    return gen.get_state() if isinstance(gen, torch.Generator) else None


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_reproduces_the_uninterrupted_run(name: str) -> None:
    uninterrupted = make(name)
    want = feed(uninterrupted, 6)
    first = make(name)
    got = feed(first, 3)
    saved = first.state_dict()
    rng = generator_state(first)
    resumed = make(name, seed=123)  # another seed: the generator's state is the caller's to save
    resumed.load_state_dict(saved)
    if rng is not None:
        resumed.generator.set_state(rng)  # type: ignore[union-attr]
    got += feed(resumed, 3, start=3)
    # Stateful ones bitwise; the others (history-free up to their solvers' certificates, e.g.
    # UPGrad's unsaved warm start, BLAS's alignment-dependent rounding) to round-off.
    tol = 0.0 if name in STATEFUL else 64 * torch.finfo(torch.float64).eps
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=f"{name}: step {i}")


@pytest.mark.parametrize("name", STATEFUL)
def test_stateful_aggregators_are_stateful(name: str) -> None:
    # The round trip above would pass vacuously for a stateless one: these must depend on history.
    agg = make(name)
    feed(agg, 3)
    assert agg.state_dict(), name
    fresh_answer = run(make(name), jacobian(seed=9))
    assert not torch.equal(run(agg, jacobian(seed=9)), fresh_answer), name


@pytest.mark.parametrize("name", NAMES)
def test_a_change_of_k_restarts_from_a_fresh_state(name: str) -> None:
    # HOSTILE 4: K changes between calls, also right after loading a checkpoint of another K.
    agg = make(name)
    feed(agg, 3)  # K = 4
    loaded = make(name)
    loaded.load_state_dict(agg.state_dict())
    wider = jacobian(k=6, seed=7)
    for instance in (agg, loaded):
        out = run(instance, wider)
        assert out.shape == run(make(name), wider).shape and bool(out.isfinite().all())
        if name not in ("PCGrad", "Random", "GradDrop", "GradVac"):  # their generator moved on
            torch.testing.assert_close(out, run(make(name), wider))
