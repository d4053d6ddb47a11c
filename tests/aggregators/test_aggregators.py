"""Aggregators: agreement with TorchJD 0.18 where it ships the method, own references elsewhere."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import labelgrad as lg
from _aggregation_helpers import needs_cvxpy, needs_quadprog, needs_scipy, needs_torchjd
from labelgrad.aggregators._qp import normalize_gramian, project_to_dual_cone, regularize_gramian
from labelgrad.aggregators.gradvac import gradvac_weights
from labelgrad.aggregators.pcgrad import pcgrad_weights

A = lg.aggregators

GRAMIAN_AGGREGATORS: list[Callable[[], lg.aggregators.GramianWeighting]] = [
    A.Mean,
    A.Sum,
    A.Random,
    A.PCGrad,
    A.MGDA,
    A.UPGrad,
    A.DualProj,
    A.IMTLG,
    A.CAGrad,
    A.NashMTL,
    A.AlignedMTL,
    A.GradVac,
    A.FairGrad,
]
JACOBIAN_AGGREGATORS: list[Callable[[], lg.aggregators.JacobianAggregator]] = [
    A.ConFIG,
    A.GradDrop,
]


def jacobian(k: int, p: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, p, generator=g, dtype=torch.float64) * (
        1 + torch.rand(k, 1, generator=g, dtype=torch.float64) * 3
    )


def random_jacobians() -> dict[str, Tensor]:
    return {f"K={k}": jacobian(k, 3 * k + 2, seed=k) for k in (1, 2, 5, 16, 80)}


def degenerate_jacobians() -> dict[str, Tensor]:
    rank_deficient = jacobian(16, 4, seed=1)  # rank 4 < K
    duplicated = jacobian(6, 20, seed=2)
    duplicated = torch.cat([duplicated, duplicated[:3]])
    zero_rows = jacobian(8, 20, seed=3)
    zero_rows[[1, 5]] = 0
    two_dup = jacobian(1, 5, seed=4).repeat(2, 1)
    return {
        "rank-deficient": rank_deficient,
        "duplicated": duplicated,
        "zero-rows": zero_rows,
        "K=2-duplicated": two_dup,
    }


ALL_J = {**random_jacobians(), **degenerate_jacobians()}
RANDOM_IDS = list(random_jacobians())
ALL_IDS = list(ALL_J)
# TorchJD's GradVac, NashMTL (cvxpy) and FairGrad (scipy) take seconds at K = 80: stop at 16.
SMALL_IDS = [name for name in ALL_IDS if ALL_J[name].shape[0] <= 16]
SMALL_RANDOM_IDS = [name for name in RANDOM_IDS if ALL_J[name].shape[0] <= 16]


def close(ours: Tensor, ref: Tensor, rtol: float = 1e-4) -> None:
    ref = ref.to(ours.dtype)
    scale = ref.abs().max().clamp(min=1e-12)
    err = float((ours - ref).abs().max() / scale)
    assert err <= rtol, f"relative max error {err:.2e} > {rtol:.0e}\nours={ours}\nref={ref}"


# --- agreement with TorchJD 0.18 --------------------------------------------------------------


@needs_torchjd
@pytest.mark.parametrize("name", ALL_IDS)
@pytest.mark.parametrize("method", ["Mean", "Sum", "MGDA", "IMTLG", "AlignedMTL"])
def test_closed_form_and_frank_wolfe_match_torchjd(method: str, name: str) -> None:
    import torchjd.aggregation as ta

    j = ALL_J[name]
    g = j @ j.T
    ref = getattr(ta, f"{method}Weighting")()
    expected = ref(j) if method in ("Mean", "Sum") else ref(g)
    close(getattr(A, method)().weights(g), expected)


@needs_quadprog
@pytest.mark.parametrize("name", ALL_IDS)
@pytest.mark.parametrize("method", ["UPGrad", "DualProj"])
def test_dual_cone_projections_match_torchjd_quadprog(method: str, name: str) -> None:
    import torchjd.aggregation as ta

    j = ALL_J[name]
    g = j @ j.T
    close(getattr(A, method)().weights(g), getattr(ta, f"{method}Weighting")()(g))
    # float32 input: same answer (we solve in float64), float32 output.
    w32 = getattr(A, method)().weights(g.float())
    assert w32.dtype == torch.float32
    close(w32.double(), getattr(ta, f"{method}Weighting")()(g), rtol=1e-4)


@needs_torchjd
@pytest.mark.parametrize("name", ALL_IDS)
def test_pcgrad_matches_torchjd_for_the_same_orders(name: str) -> None:
    import torchjd.aggregation as ta

    j = ALL_J[name]
    g = j @ j.T
    k = g.shape[0]
    torch.manual_seed(123)
    orders = torch.stack([torch.randperm(k) for _ in range(k)])  # TorchJD's draws, replayed
    torch.manual_seed(123)
    expected = ta.PCGradWeighting()(g)
    close(pcgrad_weights(g, orders), expected)


@needs_torchjd
@pytest.mark.parametrize("name", SMALL_IDS)
def test_gradvac_matches_torchjd_over_steps(name: str) -> None:
    import torchjd.aggregation as ta

    j = ALL_J[name]
    k = j.shape[0]
    ref = ta.GradVacWeighting()
    targets = torch.zeros(k, k, dtype=torch.float64)
    for step in range(3):
        g = (j + 0.3 * step * jacobian(k, j.shape[1], seed=50 + step)) @ (
            j + 0.3 * step * jacobian(k, j.shape[1], seed=50 + step)
        ).T
        torch.manual_seed(step)
        orders = []
        for i in range(k):  # TorchJD: a permutation of the others, per row
            others = [x for x in range(k) if x != i]
            perm = torch.randperm(k - 1).tolist()
            orders.append([others[p] for p in perm] + [i])
        torch.manual_seed(step)
        expected = ref(g)
        ours = gradvac_weights(g, torch.tensor(orders), targets, beta=0.5, eps=1e-8)
        close(ours, expected)
        close(targets, ref._phi_t)


@needs_torchjd
@pytest.mark.parametrize("name", ALL_IDS)
def test_random_and_graddrop_match_torchjd_on_the_global_stream(name: str) -> None:
    import torchjd.aggregation as ta

    j = ALL_J[name]
    torch.manual_seed(7)
    expected = ta.RandomWeighting()(j)
    torch.manual_seed(7)
    close(A.Random().weights(j @ j.T), expected)
    torch.manual_seed(8)
    expected = ta.GradDrop()(j)
    torch.manual_seed(8)
    close(A.GradDrop().aggregate(j), expected)
    leak = torch.linspace(0, 0.5, j.shape[0], dtype=j.dtype)
    torch.manual_seed(9)
    expected = ta.GradDrop(f=torch.sqrt, leak=leak)(j)
    torch.manual_seed(9)
    close(A.GradDrop(f=torch.sqrt, leak=leak).aggregate(j), expected)


@needs_torchjd
@pytest.mark.parametrize("name", ALL_IDS)
def test_config_matches_torchjd(name: str) -> None:
    import torchjd.aggregation as ta

    j = ALL_J[name]
    close(A.ConFIG().aggregate(j), ta.ConFIG()(j))


@needs_scipy
@pytest.mark.parametrize("name", SMALL_RANDOM_IDS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_fairgrad_matches_torchjd(alpha: float, name: str) -> None:
    import torchjd.aggregation as ta

    j = ALL_J[name]
    g = j @ j.T
    close(A.FairGrad(alpha=alpha).weights(g), ta.FairGradWeighting(alpha=alpha)(g), rtol=1e-5)


@needs_cvxpy
@pytest.mark.parametrize("name", SMALL_RANDOM_IDS)
def test_nash_mtl_matches_torchjd(name: str) -> None:
    import torchjd.aggregation as ta

    j = ALL_J[name]
    if j.shape[0] == 1:
        pytest.skip("TorchJD's NashMTL (cvxpy) cannot build its problem for K = 1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ta.NashMTL(n_tasks=j.shape[0]).weighting(j)
    ours = A.NashMTL().weights(j @ j.T)
    # TorchJD stops its convex-concave iterations after 20 programs or at residual 1e-3; where
    # it converged the two agree, elsewhere ours solves the bargaining equation more accurately.
    gn = (j @ j.T) / torch.linalg.matrix_norm(j @ j.T)

    def residual(w: Tensor) -> float:
        # the equation holds up to the common max_norm rescaling: compare directions
        a = w / w.norm()
        scale = ((gn @ a) @ (1 / a)) / ((gn @ a) @ (gn @ a))
        return float((scale * (gn @ a) - 1 / a).norm() / (1 / a).norm())

    if residual(expected) < 1e-6:
        close(ours, expected, rtol=1e-4)
    assert residual(ours) <= max(residual(expected), 1e-9)


@needs_cvxpy
@pytest.mark.parametrize("name", ["K=1", "K=2", "K=5", "K=16", "K=80", "duplicated"])
def test_cagrad_matches_torchjd_and_reaches_a_lower_objective(name: str) -> None:
    import torchjd.aggregation as ta

    j = ALL_J[name]
    g = j @ j.T
    k = g.shape[0]
    ours = A.CAGrad().weights(g)
    expected = ta.CAGradWeighting(c=0.5)(g)
    # Clarabel's interior point stops at ~1e-8 duality gap: weights agree to ~1e-4, updates closer.
    # With duplicated rows the split of weight between copies is not unique: compare updates.
    if name != "duplicated":
        close(ours, expected, rtol=1e-3)
    diff = ours - expected
    assert float(diff @ g @ diff) <= 1e-6 * float(expected @ g @ expected) + 1e-20
    if name != "K=1":  # and our simplex solution is at least as good as theirs
        gn = normalize_gramian(g, 1e-4)
        mean = torch.full((k,), 1.0 / k, dtype=g.dtype)
        sqrt_phi = 0.5 * (mean @ gn @ mean).sqrt()

        def objective(w: Tensor) -> float:
            w = (w - mean) / (w - mean).sum()
            return float(w @ gn @ mean + sqrt_phi * (w @ gn @ w).sqrt())

        assert objective(ours) <= objective(expected) + 1e-12


# --- own references ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_IDS)
def test_dual_cone_solution_satisfies_the_kkt_conditions(name: str) -> None:
    j = ALL_J[name]
    g = regularize_gramian(normalize_gramian(j @ j.T, 1e-4), 1e-4)
    k = g.shape[0]
    lower = torch.eye(k, dtype=g.dtype) / k
    v, _ = project_to_dual_cone(lower, g)
    lam = v @ g  # multipliers: G v = λ
    scale = float(lam.abs().max())
    assert bool((v >= lower - 1e-12).all())
    assert bool((lam >= -1e-10 * scale).all())
    assert float(((v - lower) * lam).abs().max()) <= 1e-10 * scale
    # the projected gradients J^T v_i are in the dual cone (up to the reg_eps = 1e-4 ridge)
    assert bool(((j @ j.T) @ v.T >= -1e-3 * float((j @ j.T).abs().max())).all())
    # the accelerator code path (fixed shapes, masked convergence) gives the same answer
    v_dev, _ = project_to_dual_cone(lower, g, host_shapes=False)
    torch.testing.assert_close(v_dev, v)
    v_pre, _ = project_to_dual_cone(lower, g, presolve_iters=20)
    torch.testing.assert_close(v_pre, v)
    # warm start from the answer: same result
    v2, _ = project_to_dual_cone(lower, g, active=v <= lower)
    torch.testing.assert_close(v2, v)


def test_pcgrad_equals_explicit_projections_in_parameter_space() -> None:
    j = jacobian(4, 6, seed=11)
    j[1] = -0.8 * j[0] + 0.1 * j[1]  # a strong conflict
    orders = torch.tensor([[3, 1, 2, 0], [0, 2, 3, 1], [1, 3, 0, 2], [2, 0, 1, 3]])
    projected = []
    for i in range(4):
        gi = j[i].clone()
        for jj in orders[i].tolist():
            if jj != i and float(gi @ j[jj]) < 0:
                gi = gi - (gi @ j[jj]) / (j[jj] @ j[jj]) * j[jj]
        projected.append(gi)
    expected = torch.stack(projected).sum(0)
    torch.testing.assert_close(pcgrad_weights(j @ j.T, orders) @ j, expected)


@pytest.mark.parametrize("name", ALL_IDS)
def test_mgda_device_path_equals_host_path(name: str) -> None:
    j = ALL_J[name]
    g = j @ j.T
    torch.testing.assert_close(A.MGDA()._weights_on_device(g), A.MGDA().weights(g))


def test_mgda_returns_a_point_of_the_simplex_close_to_min_norm() -> None:
    j = jacobian(5, 12, seed=5)
    g = j @ j.T
    w = A.MGDA().weights(g)
    assert bool((w >= 0).all())
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    # no vertex and no random simplex point has a smaller norm than the Frank-Wolfe result (+ gap)
    candidates = torch.distributions.Dirichlet(torch.ones(5, dtype=g.dtype)).sample((2000,))
    norms = (candidates @ g * candidates).sum(-1)
    assert float(w @ g @ w) <= float(norms.min()) * 1.01


def test_imtlg_gives_equal_projections_on_full_rank() -> None:
    j = jacobian(5, 12, seed=6)
    w = A.IMTLG().weights(j @ j.T)
    update = j.T @ w
    proj = (j @ update) / j.norm(dim=1)
    torch.testing.assert_close(proj, proj.mean().expand(5))
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=w.dtype))


def test_balance_weights_solve_their_equation() -> None:
    j = jacobian(6, 20, seed=7)
    g = j @ j.T
    for alpha in (0.5, 1.0, 3.0):
        w = A.FairGrad(alpha=alpha).weights(g)
        assert bool((w > 0).all())
        torch.testing.assert_close(g @ w, w.pow(-1 / alpha))
    nash = A.NashMTL(max_norm=0).weights(g)
    gn = g / torch.linalg.matrix_norm(g)
    torch.testing.assert_close(gn @ nash, 1 / nash)
    capped = A.NashMTL().weights(g)  # max_norm = 1: |J^T w| <= 1
    assert float((capped @ g @ capped).sqrt()) <= 1 + 1e-9


def test_aligned_mtl_aligns_the_singular_values() -> None:
    j = jacobian(4, 10, seed=8)
    g = j @ j.T
    w = A.AlignedMTL().weights(g)
    lam, vecs = torch.linalg.eigh(g)
    b = lam.min().sqrt() * vecs @ torch.diag(lam.rsqrt()) @ vecs.T
    torch.testing.assert_close(w, b @ torch.full((4,), 0.25, dtype=g.dtype))


def test_config_update_has_equal_cosine_with_every_gradient() -> None:
    j = jacobian(4, 10, seed=9)
    update = A.ConFIG().aggregate(j)
    cos = (j @ update) / (j.norm(dim=1) * update.norm())
    torch.testing.assert_close(cos, cos.mean().expand(4))
    assert float(cos.min()) > 0


def test_graddrop_keeps_one_sign_per_coordinate() -> None:
    j = jacobian(5, 40, seed=10)
    out = A.GradDrop(generator=torch.Generator().manual_seed(0)).aggregate(j)
    pos = j.clamp(min=0).sum(0)
    neg = j.clamp(max=0).sum(0)
    assert bool(((out == pos) | (out == neg)).all())


def test_conflicts_is_the_cosine_matrix() -> None:
    j = jacobian(5, 7, seed=12)
    j[2] = 0
    cos = lg.conflicts(j @ j.T)
    n = j.norm(dim=1)
    for a in range(5):
        for b in range(5):
            if a == 2 or b == 2:
                assert float(cos[a, b]) == 0.0
            elif a == b:
                assert float(cos[a, b]) == 1.0
            else:
                assert abs(float(cos[a, b] - j[a] @ j[b] / (n[a] * n[b]))) < 1e-12
    assert torch.equal(cos, cos.T)


# --- every aggregator: edge cases, state, randomness, validation ---------------------------


@pytest.mark.parametrize("make", GRAMIAN_AGGREGATORS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ALL_IDS)
def test_every_weighting_is_finite_shaped_and_on_dtype(
    make: Callable[[], A.GramianWeighting], name: str
) -> None:
    j = ALL_J[name]
    for dtype in (torch.float64, torch.float32):
        g = (j @ j.T).to(dtype)
        w = make().weights(g)
        assert w.shape == (g.shape[0],)
        assert w.dtype == dtype
        assert bool(w.isfinite().all()), w


@pytest.mark.parametrize("make", JACOBIAN_AGGREGATORS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ALL_IDS)
def test_jacobian_aggregators(make: Callable[[], A.JacobianAggregator], name: str) -> None:
    j = ALL_J[name]
    agg = make()
    assert isinstance(agg, A.JacobianAggregator)
    out = agg.aggregate(j)
    assert out.shape == (j.shape[1],)
    assert bool(out.isfinite().all())
    with pytest.raises(AttributeError, match="weights"):
        agg.weights(j @ j.T)  # type: ignore[operator]


def test_weights_are_constants_even_for_a_gramian_on_the_graph() -> None:
    j = jacobian(4, 6, seed=18).requires_grad_(True)
    g = j @ j.T
    for make in GRAMIAN_AGGREGATORS:
        w = make().weights(g)
        assert not w.requires_grad
    for make_j in JACOBIAN_AGGREGATORS:
        assert not make_j().aggregate(j).requires_grad


def test_zero_gramian_gives_finite_weights() -> None:
    g = torch.zeros(3, 3)
    for make in GRAMIAN_AGGREGATORS:
        w = make().weights(g)
        assert bool(w.isfinite().all()), make


def test_flags() -> None:
    for make in GRAMIAN_AGGREGATORS:
        assert not isinstance(make(), A.JacobianAggregator)


@pytest.mark.parametrize("make", [A.GradVac, A.NashMTL], ids=lambda f: f.__name__)
def test_stateful_state_dict_round_trip(make: Callable[[], A.GramianWeighting]) -> None:
    j = jacobian(6, 15, seed=13)
    g = j @ j.T
    torch.manual_seed(0)
    first = make()
    first.weights(g)
    first.weights(0.5 * g + torch.eye(6, dtype=g.dtype))
    state = first.state_dict()
    assert len(state) > 0
    second = make()
    second.load_state_dict(state)
    for key, value in state.items():
        assert torch.equal(second.state_dict()[key], value)
    torch.manual_seed(1)
    a = first.weights(g)
    torch.manual_seed(1)
    b = second.weights(g)
    assert torch.equal(a, b)


def test_gradvac_state_changes_the_weights() -> None:
    j = jacobian(5, 15, seed=14)
    g = j @ j.T
    agg = A.GradVac(generator=torch.Generator().manual_seed(0))
    first = agg.weights(g)
    assert bool((agg.target_cosines != 0).any())
    agg.reset()
    assert agg.target_cosines.numel() == 0
    again = A.GradVac(generator=torch.Generator().manual_seed(0)).weights(g)
    assert torch.equal(first, again)


def test_nash_update_weights_every_reuses_the_solution() -> None:
    j = jacobian(4, 9, seed=15)
    g = j @ j.T
    agg = A.NashMTL(max_norm=0, update_weights_every=2)
    w1 = agg.weights(g)
    w2 = agg.weights(3 * g)  # reused, not re-solved
    assert torch.equal(w1, w2)
    assert int(agg.calls) == 2


def test_nash_reset_restarts_the_update_schedule() -> None:
    j = jacobian(4, 9, seed=15)
    gs = [g * (1 + i) for i, g in enumerate([j @ j.T] * 4)]
    fresh = A.NashMTL(max_norm=0, update_weights_every=3)
    expected = [fresh.weights(g) for g in gs]
    agg = A.NashMTL(max_norm=0, update_weights_every=3)
    for g in gs[:2]:  # two calls of a period of three: reset mid-period
        agg.weights(g)
    agg.reset()
    for g, want in zip(gs, expected, strict=True):
        assert torch.equal(agg.weights(g), want)
    assert int(agg.calls) == len(gs)


@pytest.mark.parametrize(
    "make",
    [
        lambda gen: A.Random(generator=gen),
        lambda gen: A.PCGrad(generator=gen),
        lambda gen: A.GradVac(generator=gen),
    ],
    ids=["Random", "PCGrad", "GradVac"],
)
def test_generator_reproducibility(make: Callable[[torch.Generator], A.GramianWeighting]) -> None:
    j = jacobian(7, 6, seed=16)
    g = j @ j.T
    a = make(torch.Generator().manual_seed(3)).weights(g)
    b = make(torch.Generator().manual_seed(3)).weights(g)
    c = make(torch.Generator().manual_seed(4)).weights(g)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_graddrop_generator_reproducibility() -> None:
    j = jacobian(7, 30, seed=17)
    a = A.GradDrop(generator=torch.Generator().manual_seed(3)).aggregate(j)
    b = A.GradDrop(generator=torch.Generator().manual_seed(3)).aggregate(j)
    assert torch.equal(a, b)


@pytest.mark.parametrize("make", GRAMIAN_AGGREGATORS, ids=lambda f: f.__name__)
def test_gramian_validation(make: Callable[[], A.GramianWeighting]) -> None:
    agg = make()
    with pytest.raises(ValueError, match="square"):
        agg.weights(torch.ones(3, 4))
    with pytest.raises(ValueError, match="square"):
        agg.weights(torch.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        agg.weights(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(TypeError, match="floating"):
        agg.weights(torch.eye(2, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        agg.weights([[1.0]])  # type: ignore[arg-type]


def test_jacobian_validation() -> None:
    with pytest.raises(ValueError, match="Jacobian"):
        A.ConFIG().aggregate(torch.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        A.GradDrop().aggregate(torch.tensor([[1.0, float("inf")]]))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        A.MGDA(epsilon=0)
    with pytest.raises(ValueError, match="beta"):
        A.GradVac(beta=2.0)
    with pytest.raises(ValueError, match="scale_mode"):
        A.AlignedMTL(scale_mode="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pref_vector"):
        A.UPGrad(pref_vector=torch.ones(2, 2))
    with pytest.raises(ValueError, match="pref_vector has 2 entries"):
        A.UPGrad(pref_vector=torch.ones(2)).weights(torch.eye(3))


@pytest.mark.parametrize(
    ("build", "name", "call"),
    [
        (lambda v: A.UPGrad(pref_vector=v), "pref_vector", "weights"),
        (lambda v: A.DualProj(pref_vector=v), "pref_vector", "weights"),
        (lambda v: A.AlignedMTL(pref_vector=v), "pref_vector", "weights"),
        (lambda v: A.ConFIG(pref_vector=v), "pref_vector", "aggregate"),
        (lambda v: A.GradDrop(leak=v), "leak", "aggregate"),
    ],
)
def test_per_row_vectors_are_checked_and_name_the_argument(
    build: Callable[[Tensor], A.GramianWeighting], name: str, call: str
) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a 1-D tensor"):
        build(torch.ones(2, 2))
    with pytest.raises(ValueError, match=f"{name} has 2 entries, expected K = 3"):
        getattr(build(torch.ones(2)), call)(torch.eye(3))


def test_module_call_is_weights() -> None:
    g = torch.eye(3)
    torch.testing.assert_close(A.UPGrad()(g), A.UPGrad().weights(g))
