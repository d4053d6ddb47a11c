"""RowRules over torch's own optimizer database (``common_optimizers.optim_db``), issue 12.

Every optimizer and constructor configuration that torch itself tests on the CPU, in float32 and
float64, with its default, foreach and fused implementations (``differentiable`` is left out: it
needs parameters that require grad inside the step, which a wrapped optimizer never sees):

(a) no rules: RowRules steps bitwise as the bare optimizer (parameters and state);
(b) frozen rows and all their state bitwise still; the other rows equal a split-parameter
    reference (each row its own parameter in the same optimizer);
(c) lr_scale equals a param group per row with the scaled lr where the update is linear in lr;
    a warning at construction otherwise;
(d) a state_dict round trip mid-training continues bitwise;
(e) a row that starts moving later equals a fresh parameter (torch's initial state for the row;
    the tensor's scalar state, e.g. the step counter, is shared as documented);
(f) max_norm equals the bare optimizer's step followed by a float64 projection of the weight
    rows; the bias, the trunk and a row inside its ball keep the bare optimizer's bits.

Refused cases are tested as refusals, not skipped: LBFGS (needs a closure), Muon and Adafactor
(couple the rows of a parameter). SparseAdam runs with sparse gradients.
"""

from __future__ import annotations

import copy
import sys
import types
import unittest
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg

if "expecttest" not in sys.modules:
    try:
        import expecttest  # noqa: F401
    except ImportError:  # torch's test helpers import it for a base class only
        stub = types.ModuleType("expecttest")
        stub.TestCase = unittest.TestCase  # type: ignore[attr-defined]
        sys.modules["expecttest"] = stub
from torch.testing._internal.common_optimizers import optim_db

C, D = 4, 3
REFUSED = {
    torch.optim.LBFGS: "closure",
    torch.optim.Muon: "couples",
    torch.optim.Adafactor: "couples",
}
# Update linear in lr (the optimizer's own math, not labelgrad's list): lr_scale is exact.
LINEAR = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.SparseAdam,
)
# The only lazily created state whose initial value is not read from the optimizer's constructor
# arguments as 0: Rprop's step sizes (lr) and SGD's buffer (the first gradient). These two read
# no step counter, so their reference is a plain fresh parameter.
PLAIN_FRESH = (torch.optim.SGD, torch.optim.Rprop)


def configs(refused: bool) -> list[Any]:
    out = []
    for info in optim_db:
        cls = info.optim_cls
        if (cls in REFUSED) != refused:
            continue
        impls = ["default"]
        impls += ["foreach"] if "foreach" in info.supported_impls else []
        if "fused" in info.supported_impls and "cpu" in info.supports_fused_on:
            impls.append("fused")
        for dtype in (torch.float32, torch.float64):
            for inp in info.optim_inputs_func("cpu", dtype):
                for impl in impls if not refused else ["default"]:
                    kwargs = dict(inp.kwargs)
                    if impl != "default":
                        kwargs[impl] = True
                    name = f"{cls.__name__}-{inp.desc}-{impl}-{str(dtype)[6:]}".replace(" ", "_")
                    out.append(pytest.param(cls, kwargs, dtype, id=name))
    return out


CASES = configs(refused=False)


class Head:
    """A (C, D) weight and (C,) bias (label-owned) and a trunk parameter, in one param group."""

    def __init__(self, dtype: torch.dtype, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(C, D, generator=g, dtype=dtype))
        self.b = nn.Parameter(torch.randn(C, generator=g, dtype=dtype))
        self.trunk = nn.Parameter(torch.randn(D, D, generator=g, dtype=dtype))

    def params(self) -> list[Tensor]:
        return [self.trunk, self.w, self.b]

    def rows(self) -> list[tuple[Tensor, int]]:
        return [(self.w, 0), (self.b, 0)]

    def set_grads(self, t: int, sparse: bool) -> None:
        gw, gb, gt = grads(t, self.w.dtype)
        for p, g in ((self.w, gw), (self.b, gb), (self.trunk, gt)):
            p.grad = g.to_sparse() if sparse else g


def grads(t: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 + t)
    return (
        torch.randn(C, D, generator=g, dtype=dtype),
        torch.randn(C, generator=g, dtype=dtype),
        torch.randn(D, D, generator=g, dtype=dtype),
    )


def build(cls: Any, kwargs: dict[str, Any], params: Any) -> torch.optim.Optimizer:
    return cls(params, **copy.deepcopy(kwargs))


def is_sparse(cls: Any) -> bool:
    return cls is torch.optim.SparseAdam


def row_state(opt: torch.optim.Optimizer, p: Tensor, c: int) -> dict[str, Tensor]:
    return {
        k: v[c].clone()
        for k, v in opt.state.get(p, {}).items()
        if isinstance(v, Tensor) and v.shape == p.shape
    }


class Split:
    """The reference: row c of the head as its own parameters (w_c, b_c) in one optimizer with
    the trunk; with ``lr_scale``, a param group per row with lr * s[c]."""

    def __init__(
        self, head: Head, cls: Any, kwargs: dict[str, Any], rows: list[int], scale: Any = None
    ) -> None:
        self.rows = rows
        self.trunk = nn.Parameter(head.trunk.detach().clone())
        self.w = {c: nn.Parameter(head.w.detach()[c].clone()) for c in rows}
        self.b = {c: nn.Parameter(head.b.detach()[c : c + 1].clone()) for c in rows}
        groups: list[dict[str, Any]] = [{"params": [self.trunk]}]
        lr = kwargs.get("lr", build(cls, kwargs, [nn.Parameter(torch.zeros(1))]).defaults["lr"])
        for c in rows:
            group: dict[str, Any] = {"params": [self.w[c], self.b[c]]}
            if scale is not None:
                value = float(lr) * scale[c]
                group["lr"] = torch.tensor(value) if isinstance(lr, Tensor) else value
            groups.append(group)
        self.opt = build(cls, kwargs, groups)

    def step(self, t: int, sparse: bool) -> None:
        gw, gb, gt = grads(t, self.trunk.dtype)
        pairs = [(self.trunk, gt)]
        pairs += [(self.w[c], gw[c]) for c in self.rows] + [
            (self.b[c], gb[c : c + 1]) for c in self.rows
        ]
        for p, g in pairs:
            p.grad = g.to_sparse() if sparse else g.clone()
        self.opt.step()

    def check(self, head: Head, opt: torch.optim.Optimizer) -> None:
        torch.testing.assert_close(head.trunk.detach(), self.trunk.detach())
        for c in self.rows:
            for ours, ref in ((head.w, self.w[c]), (head.b, self.b[c])):
                torch.testing.assert_close(ours.detach()[c].reshape(ref.shape), ref.detach())
                for k, v in self.opt.state[ref].items():
                    if isinstance(v, Tensor) and v.shape == ref.shape:
                        mine = opt.state[ours][k][c].reshape(ref.shape)
                        torch.testing.assert_close(mine, v, msg=f"state {k!r} of row {c}")


@pytest.mark.parametrize(("cls", "kwargs", "dtype"), CASES)
def test_a_no_rules_is_the_bare_optimizer_bitwise(cls: Any, kwargs: dict[str, Any], dtype: Any):
    sparse = is_sparse(cls)
    ours, bare = Head(dtype), Head(dtype)
    opt = lg.RowRules(build(cls, kwargs, ours.params()), rows=ours.rows())
    ref = build(cls, kwargs, bare.params())
    for t in range(3):
        ours.set_grads(t, sparse)
        bare.set_grads(t, sparse)
        opt.step()
        ref.step()
    for a, b in zip(ours.params(), bare.params(), strict=True):
        assert torch.equal(a, b)
        for k, v in ref.state[b].items():
            mine = opt.state[a][k]
            assert torch.equal(mine, v) if isinstance(v, Tensor) else mine == v, k


@pytest.mark.parametrize(("cls", "kwargs", "dtype"), CASES)
def test_b_frozen_rows_still_other_rows_split_reference(
    cls: Any, kwargs: dict[str, Any], dtype: Any
):
    sparse = is_sparse(cls)
    head = Head(dtype, seed=1)
    frozen = [1, 3]
    w0, b0 = head.w.detach().clone(), head.b.detach().clone()
    ref = Split(head, cls, kwargs, rows=[0, 2])
    opt = lg.RowRules(build(cls, kwargs, head.params()), rows=head.rows(), frozen=frozen)
    kept: dict[str, Tensor] = {}
    for t in range(3):
        head.set_grads(t, sparse)
        opt.step()
        ref.step(t, sparse)
        assert torch.equal(head.w[frozen], w0[frozen]) and torch.equal(head.b[frozen], b0[frozen])
        state = {
            f"{name}.{k}": v[frozen].clone()
            for name, p in (("w", head.w), ("b", head.b))
            for k, v in opt.state[p].items()
            if isinstance(v, Tensor) and v.shape == p.shape
        }
        for k, v in kept.items():
            assert torch.equal(state[k], v), f"state {k} of a frozen row moved at step {t}"
        kept = state
        ref.check(head, opt)


@pytest.mark.parametrize(("cls", "kwargs", "dtype"), CASES)
def test_c_lr_scale_is_a_param_group_with_the_scaled_lr(
    cls: Any, kwargs: dict[str, Any], dtype: Any
):
    sparse = is_sparse(cls)
    head = Head(dtype, seed=2)
    scale = [1.0, 0.5, 2.0, 0.25]
    if not issubclass(cls, LINEAR):
        with pytest.warns(UserWarning, match="linear in lr"):
            lg.RowRules(build(cls, kwargs, head.params()), rows=head.rows(), lr_scale=scale)
        return
    ref = Split(head, cls, kwargs, rows=list(range(C)), scale=scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = lg.RowRules(build(cls, kwargs, head.params()), rows=head.rows(), lr_scale=scale)
    for t in range(3):
        head.set_grads(t, sparse)
        opt.step()
        ref.step(t, sparse)
        ref.check(head, opt)


@pytest.mark.parametrize(("cls", "kwargs", "dtype"), CASES)
def test_d_state_dict_round_trip_continues_bitwise(cls: Any, kwargs: dict[str, Any], dtype: Any):
    sparse = is_sparse(cls)
    targets = [
        torch.tensor([0, 1, 2]),
        torch.tensor([1, 3]),
        torch.tensor([0, 3]),
        torch.tensor([2]),
    ]
    scale = [1.0, 0.5, 2.0, 0.25] if issubclass(cls, LINEAR) else None

    def make(head: Head) -> lg.RowRules:
        return lg.RowRules(
            build(cls, kwargs, head.params()),
            rows=head.rows(),
            frozen=[0],
            lr_scale=scale,
            skip_absent=True,
        )

    head, other = Head(dtype, seed=3), Head(dtype, seed=3)
    opt = make(head)
    for t in range(2):
        head.set_grads(t, sparse)
        opt.step(targets=targets[t])
    opt.unfreeze([0])
    saved = copy.deepcopy(opt.state_dict())
    with torch.no_grad():
        for a, b in zip(other.params(), head.params(), strict=True):
            a.copy_(b)
    resumed = make(other)
    resumed.load_state_dict(saved)
    for t in range(2, 4):
        for h, o in ((head, opt), (other, resumed)):
            h.set_grads(t, sparse)
            o.step(targets=targets[t])
    # torch's own round trip is not bitwise for every optimizer (its load_state_dict casts
    # NAdam's float32 mu_product to the parameter's dtype): hold RowRules to what it gets.
    exact = bare_round_trip_is_bitwise(cls, kwargs, dtype)
    for a, b in zip(head.params(), other.params(), strict=True):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b)
        for k, v in opt.state[a].items():
            mine = resumed.state[b][k]
            if not isinstance(v, Tensor):
                assert mine == v, k
            elif exact:
                assert torch.equal(mine, v), k
            else:
                torch.testing.assert_close(mine, v.to(mine.dtype), msg=k)


def bare_round_trip_is_bitwise(cls: Any, kwargs: dict[str, Any], dtype: Any) -> bool:
    sparse = is_sparse(cls)
    head, other = Head(dtype, seed=5), Head(dtype, seed=5)
    opt = build(cls, kwargs, head.params())
    head.set_grads(0, sparse)
    opt.step()
    resumed = build(cls, kwargs, other.params())
    with torch.no_grad():
        for a, b in zip(other.params(), head.params(), strict=True):
            a.copy_(b)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for h, o in ((head, opt), (other, resumed)):
        h.set_grads(1, sparse)
        o.step()
    return all(torch.equal(a, b) for a, b in zip(head.params(), other.params(), strict=True))


def fresh_reference(
    cls: Any, kwargs: dict[str, Any], head: Head, opt: torch.optim.Optimizer, c: int
) -> tuple[torch.optim.Optimizer, nn.Parameter, nn.Parameter]:
    """Row c as new parameters with a new optimizer. Where the optimizer reads its scalar state
    (step counter, NAdam's mu_product, ASGD's eta and mu), the row shares the tensor's: the new
    state is torch's documented initial state (moments, averages and ASGD's ax start at zero;
    Adagrad creates its state at construction) with the tensor's scalars copied in."""
    w = nn.Parameter(head.w.detach()[c].clone())
    b = nn.Parameter(head.b.detach()[c : c + 1].clone())
    ref = build(cls, kwargs, [w, b])
    if cls in PLAIN_FRESH:
        return ref, w, b
    for mine, p in ((w, head.w), (b, head.b)):
        st = ref.state[mine]
        for k, v in opt.state[p].items():
            if not isinstance(v, Tensor):
                st[k] = v
            elif v.dim() == 0:
                st[k] = v.clone()
            elif k not in st:
                st[k] = torch.zeros_like(mine)
    return ref, w, b


@pytest.mark.parametrize("how", ["frozen", "absent"])
@pytest.mark.parametrize(("cls", "kwargs", "dtype"), CASES)
def test_e_rows_starting_later_equal_a_fresh_parameter(
    cls: Any, kwargs: dict[str, Any], dtype: Any, how: str
):
    sparse = is_sparse(cls)
    head = Head(dtype, seed=4)
    late = 2
    base = build(cls, kwargs, head.params())
    if how == "frozen":
        opt = lg.RowRules(base, rows=head.rows(), frozen=[late])
    else:
        opt = lg.RowRules(base, rows=head.rows(), skip_absent=True)
    others = torch.tensor([c for c in range(C) if c != late])
    for t in range(2):
        head.set_grads(t, sparse)
        opt.step(targets=others)
    opt.unfreeze([late])
    ref, w, b = fresh_reference(cls, kwargs, head, opt, late)
    for t in range(2, 5):
        head.set_grads(t, sparse)
        opt.step(targets=torch.arange(C))
        gw, gb, _ = grads(t, dtype)
        for p, g in ((w, gw[late]), (b, gb[late : late + 1])):
            p.grad = g.to_sparse() if sparse else g.clone()
        ref.step()
        for ours, mine in ((head.w, w), (head.b, b)):
            torch.testing.assert_close(
                ours.detach()[late].reshape(mine.shape), mine.detach(), msg=f"row at step {t}"
            )
            for k, v in ref.state[mine].items():
                if isinstance(v, Tensor) and v.shape == mine.shape:
                    got = opt.state[ours][k][late].reshape(mine.shape)
                    torch.testing.assert_close(got, v, msg=f"state {k!r} at step {t}")


@pytest.mark.parametrize(("cls", "kwargs", "dtype"), configs(refused=True))
def test_refused_optimizers_raise_a_clear_error(cls: Any, kwargs: dict[str, Any], dtype: Any):
    head = Head(dtype)
    params = [head.w] if cls is torch.optim.Muon else head.params()  # Muon takes 2-D only
    rows: Any = head.w if cls is torch.optim.Muon else head.rows()
    with pytest.raises(TypeError, match=REFUSED[cls]):
        lg.RowRules(build(cls, kwargs, params), rows=rows, frozen=[0])


# Rows 0-2 (norms about 1.7 at the start) are projected; row 3's ball is never reached.
RADII = [0.5, 1.0, 1.5, 1e3]


def project_rows(w: Tensor, radii: list[float]) -> int:
    """``w_c * min(1, r_c / ||w_c||)`` in float64, written out; the number of rows rescaled."""
    with torch.no_grad():
        w64 = w.detach().double()
        factor = torch.ones(C, dtype=torch.float64)
        for c in range(C):
            norm = float(w64[c].norm())
            if norm > radii[c]:
                factor[c] = radii[c] / norm
        w.copy_((w64 * factor[:, None]).to(w.dtype))
    return int((factor < 1).sum())


@pytest.mark.parametrize(("cls", "kwargs", "dtype"), CASES)
def test_f_max_norm_is_the_bare_step_then_a_projection(
    cls: Any, kwargs: dict[str, Any], dtype: Any
):
    sparse = is_sparse(cls)
    ours, bare = Head(dtype, seed=6), Head(dtype, seed=6)
    radii = torch.tensor(RADII, dtype=torch.float64)
    opt = lg.RowRules(build(cls, kwargs, ours.params()), rows=ours.rows(), max_norm=radii)
    ref = build(cls, kwargs, bare.params())
    projected = 0
    for t in range(3):
        ours.set_grads(t, sparse)
        bare.set_grads(t, sparse)
        opt.step()
        ref.step()
        projected += project_rows(bare.w, RADII)
        torch.testing.assert_close(ours.w.detach(), bare.w.detach(), msg=f"weight at step {t}")
        assert torch.equal(ours.w[3], bare.w[3]), "a row inside its ball changed"
        assert torch.equal(ours.b, bare.b) and torch.equal(ours.trunk, bare.trunk)
        for k, v in ref.state[bare.w].items():
            mine = opt.state[ours.w][k]
            if isinstance(v, Tensor):
                torch.testing.assert_close(mine, v, msg=f"state {k!r} at step {t}")
            else:
                assert mine == v, k
    assert projected > 0
