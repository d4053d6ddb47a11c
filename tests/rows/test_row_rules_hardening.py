"""RowRules on hard cases: rows that start late, refused optimizers, the bare step, bad input.

Regression tests for issue 12 (defects 4-6) and issue 15 (row-rule items).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg

C, D = 4, 3


def head(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D, C, dtype=dtype)


def grads(step: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(C, D, generator=g, dtype=dtype), torch.randn(C, generator=g, dtype=dtype)


def set_grads(h: nn.Linear, step: int) -> None:
    gw, gb = grads(step, h.weight.dtype)
    h.weight.grad, h.bias.grad = gw.clone(), gb.clone()


# -- issue 12 defect 4: a row that starts moving later starts as a fresh parameter --------------

LATE_CASES = {
    "rprop": lambda p: torch.optim.Rprop(p, lr=0.01),
    "rprop_foreach": lambda p: torch.optim.Rprop(p, lr=0.01, foreach=True),
    "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5),
    "sgd_dampening_foreach": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, dampening=0.5, foreach=True
    ),
    "sgd_dampening_fused": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, dampening=0.5, fused=True
    ),
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, foreach=True
    ),
}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "snapshot"])
@pytest.mark.parametrize("how", ["frozen", "absent"])
@pytest.mark.parametrize("name", list(LATE_CASES))
def test_row_starting_late_equals_a_fresh_parameter(name: str, how: str, fast: bool):
    """Row 1 sits out the step that creates the state, then moves for three steps: it must equal
    a new parameter stepped with the same gradients by the same optimizer (neither optimizer
    here reads a step counter). Before the fix Rprop started that row at step size 1e-6 and
    SGD with dampening from a zero buffer."""
    make = LATE_CASES[name]
    h = head()
    w1, b1 = (h.weight.detach()[1].clone(), h.bias.detach()[1:2].clone())
    if how == "frozen":
        opt = lg.RowRules(make(h.parameters()), rows=h, frozen=[1], fast=fast)
    else:
        opt = lg.RowRules(make(h.parameters()), rows=h, skip_absent=True, fast=fast)
    fresh_w, fresh_b = nn.Parameter(w1.clone()), nn.Parameter(b1.clone())
    ref = make([fresh_w, fresh_b])
    set_grads(h, 0)
    opt.step(targets=torch.tensor([0, 2, 3]))
    assert torch.equal(h.weight[1], w1)
    if how == "frozen":
        opt.unfreeze([1])
    for t in range(1, 4):
        set_grads(h, t)
        opt.step(targets=torch.arange(C))
        gw, gb = grads(t)
        fresh_w.grad, fresh_b.grad = gw[1].clone(), gb[1:2].clone()
        ref.step()
        # close, not bitwise: torch's fused kernels round a 3-element row and a 12-element
        # tensor differently (vector body vs scalar tail); the defects were off by >= 5%.
        torch.testing.assert_close(h.weight[1], fresh_w, msg=f"row 1 after step {t}")
        torch.testing.assert_close(h.bias[1:2], fresh_b)
        for key, value in ref.state[fresh_w].items():
            if value.shape == fresh_w.shape:
                torch.testing.assert_close(opt.state[h.weight][key][1], value, msg=key)


def test_adam_row_starting_late_uses_zero_moments_and_the_shared_counter():
    """Adam's initial moments are zeros; the step counter is the tensor's (as SparseAdam)."""
    h = head()
    opt = lg.RowRules(torch.optim.Adam(h.parameters(), lr=0.1), rows=h, frozen=[2], fast=False)
    set_grads(h, 0)
    opt.step()
    state = opt.state[h.weight]
    assert torch.equal(state["exp_avg"][2], torch.zeros(D, dtype=torch.float64))
    opt.unfreeze([2])
    w2 = h.weight.detach()[2].clone()
    set_grads(h, 1)
    opt.step()
    # step 2 of Adam from zero moments: m = 0.1 g, v = 0.001 g^2, bias corrections at t=2
    g = grads(1)[0][2]
    m, v = 0.1 * g, 0.001 * g * g
    expected = w2 - 0.1 * (m / (1 - 0.9**2)) / ((v / (1 - 0.999**2)).sqrt() + 1e-8)
    torch.testing.assert_close(h.weight[2], expected)


def test_state_dict_keeps_which_rows_have_started():
    def build() -> tuple[nn.Linear, lg.RowRules]:
        h = head(seed=3)
        return h, lg.RowRules(
            torch.optim.SGD(h.parameters(), lr=0.1, momentum=0.9, dampening=0.5),
            rows=h,
            skip_absent=True,
        )

    h, opt = build()
    set_grads(h, 0)
    opt.step(targets=torch.tensor([0, 1]))  # rows 2, 3 not started
    saved = copy.deepcopy(opt.state_dict())
    h2, opt2 = build()
    with torch.no_grad():
        for a, b in zip(h2.parameters(), h.parameters()):
            a.copy_(b)
    opt2.load_state_dict(saved)
    for hh, oo in ((h, opt), (h2, opt2)):
        set_grads(hh, 1)
        oo.step(targets=torch.arange(C))
    assert torch.equal(h.weight, h2.weight)
    assert torch.equal(
        opt.state[h.weight]["momentum_buffer"], opt2.state[h2.weight]["momentum_buffer"]
    )
    # the first step of rows 2 and 3 set their buffer to the gradient itself
    assert torch.equal(opt.state[h.weight]["momentum_buffer"][2:], grads(1)[0][2:])


# -- issue 12 defect 5: optimizers that couple rows are refused; odd state is named -------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: torch.optim.LBFGS(p), "closure"),
        (lambda p: torch.optim.Muon([q for q in p if q.dim() == 2]), "couples the rows"),
        (lambda p: torch.optim.Adafactor(p), "couples the rows"),
    ],
    ids=["lbfgs", "muon", "adafactor"],
)
def test_closure_and_row_coupling_optimizers_are_refused(make: Any, match: str):
    h = head(torch.float32)
    opt = make(list(h.parameters()))
    rows: Any = h if not isinstance(opt, torch.optim.Muon) else h.weight
    with pytest.raises(TypeError, match=match):
        lg.RowRules(opt, rows=rows, frozen=[0])


class RowSummed(torch.optim.Optimizer):
    """A custom optimizer with a state not shaped like its parameter (one value per column)."""

    def __init__(self, params: Any, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                st.setdefault("col", torch.zeros(p.shape[-1:], dtype=p.dtype))
                st["col"].add_(p.grad.reshape(-1, p.shape[-1]).square().sum(0))
                p.add_(p.grad / (st["col"].sqrt() + 1), alpha=-group["lr"])


def test_state_not_shaped_like_the_parameter_is_named_in_a_warning():
    h = head()
    opt = lg.RowRules(RowSummed([h.weight]), rows=h.weight, frozen=[0])
    set_grads(h, 0)
    with pytest.warns(UserWarning, match="'col' of shape \\(3,\\)"):
        opt.step()  # creates the state
    w0 = h.weight.detach()[0].clone()
    set_grads(h, 2)
    opt.step()
    assert torch.equal(h.weight[0], w0)  # the row itself is still protected


# -- issue 12 defect 6: no rules is the bare optimizer, bitwise ---------------------------------

BARE = [
    pytest.param(cls, impl, dtype, id=f"{cls.__name__}-{impl}-{str(dtype)[6:]}")
    for cls in (torch.optim.Adam, torch.optim.AdamW)
    for impl in ("loop", "foreach", "fused")
    for dtype in (torch.float32, torch.float64)
]


@pytest.mark.parametrize(("cls", "impl", "dtype"), BARE)
def test_no_rules_steps_bitwise_as_the_bare_optimizer(cls: Any, impl: str, dtype: torch.dtype):
    """Before the fix Adam/AdamW went through labelgrad's kernel and differed by 1 ulp."""
    kw: dict[str, Any] = {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}
    kw.update({"fused": True} if impl == "fused" else {"foreach": impl == "foreach"})
    ours, bare = head(dtype, seed=4), head(dtype, seed=4)
    opt = lg.RowRules(cls(ours.parameters(), **kw), rows=ours)
    ref = cls(bare.parameters(), **kw)
    for t in range(4):
        set_grads(ours, t)
        set_grads(bare, t)
        opt.step()
        ref.step()
    for a, b in zip(ours.parameters(), bare.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.state.values(), ref.state.values()):
        for key in a:
            assert torch.equal(a[key], b[key]), key


# -- issue 15: labels are never read as another encoding ----------------------------------------


def test_integer_2d_labels_need_an_encoding_and_are_read_as_told():
    h = head()
    opt = lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h, skip_absent=True)
    three_cols = torch.tensor([[0, 1, 1]])  # multi-hot for 3 classes, given to a 4-class head
    with pytest.raises(ValueError, match="encoding="):
        opt.observe(three_cols)  # before: read as class indices 0, 1, 1
    with pytest.raises(ValueError, match="encoding="):
        opt.step(targets=torch.tensor([[0, 1, 0, 1]]))  # K == C: step now takes encoding=
    w = h.weight.detach().clone()
    set_grads(h, 0)
    opt.step(targets=torch.tensor([[0, 1, 0, 1]]), encoding="multi_hot")
    assert (h.weight != w).any(dim=1).tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="num_classes"):
        opt.step(targets=three_cols, encoding="multi_hot")
    logits = torch.zeros(2, C)
    set_grads(h, 1)
    w = h.weight.detach().clone()
    opt.step(targets=torch.tensor([[0, 0, 1, 0], [0, 0, 1, 0]]), like=logits)
    assert (h.weight != w).any(dim=1).tolist() == [False, False, True, False]
    opt.observe(torch.tensor([[3, 3, 3]]), encoding="index")  # (N, T) class indices
    assert opt.present.tolist() == [False, False, False, True]


def test_route_reads_labels_as_told():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    router = lg.route(
        {
            "ab": (torch.optim.SGD(a.parameters(), lr=0.1), [0, 1]),
            "cd": (torch.optim.SGD(b.parameters(), lr=0.1), [2, 3]),
        }
    )
    (a.weight.sum() + b.weight.sum()).backward()
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    with pytest.raises(ValueError, match="encoding="):
        router.step(targets=torch.tensor([[0, 0, 1]]))  # before: stepped "ab" (index 0, 1)
    router.zero_grad()
    (a.weight.sum() + b.weight.sum()).backward()
    router.step(targets=torch.tensor([[0, 0, 1, 0]]), encoding="multi_hot")
    assert torch.equal(a.weight, wa) and not torch.equal(b.weight, wb)


# -- issue 15: construction and load_state_dict validate every rule -----------------------------


def saved_rules() -> dict[str, Any]:
    h = head()
    opt = lg.RowRules(torch.optim.Adam(h.parameters()), rows=h, frozen=[1], lr_scale=[1.0] * C)
    set_grads(h, 0)
    opt.step()
    return copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("frozen", torch.tensor([True]), "\\['frozen'\\] must be a bool tensor of shape \\(4,\\)"),
        ("frozen", torch.tensor([1, 0, 0, 0]), "\\['frozen'\\] must be a bool tensor"),
        ("lr_scale", torch.ones(3, dtype=torch.float64), "\\['lr_scale'\\] must be a float tensor"),
        ("lr_scale", torch.tensor([1.0, -1.0, 1.0, 1.0]), "\\['lr_scale'\\] must be finite"),
        (
            "weight_decay",
            torch.tensor([0.0, float("nan"), 0.0, 0.0]),
            "\\['weight_decay'\\] must be",
        ),
        ("present", torch.zeros(5, dtype=torch.bool), "'present'"),
        ("skip_absent", 1, "\\['skip_absent'\\] must be a bool"),
        ("num_classes", 5, "num_classes=5"),
        ("started", torch.ones(1, C, dtype=torch.bool), "'started'"),
    ],
)
def test_load_state_dict_checks_every_field(field: str, value: Any, match: str):
    """Before: a wrong-length frozen broadcast (the whole head frozen) or failed deep in torch."""
    sd = saved_rules()
    sd["row_rules"][field] = value
    h = head()
    opt = lg.RowRules(torch.optim.Adam(h.parameters()), rows=h)
    frozen_before = opt.frozen.clone()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert torch.equal(opt.frozen, frozen_before)  # nothing half-loaded


def test_load_state_dict_of_another_optimizer_type_is_refused_at_load():
    sd = saved_rules()  # around Adam
    h = head()
    opt = lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1, momentum=0.9), rows=h)
    with pytest.raises(ValueError, match="around Adam, this one wraps SGD"):
        opt.load_state_dict(sd)


def test_route_state_dict_of_other_optimizer_types_is_refused_at_load():
    def build(cls: Any) -> lg.Router:
        a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        return lg.route(
            {"ab": (cls(a.parameters(), lr=0.1), [0, 1]), "cd": (cls(b.parameters(), lr=0.1), [2])}
        )

    sd = build(torch.optim.Adam).state_dict()
    with pytest.raises(ValueError, match="'ab' was saved from Adam"):
        build(torch.optim.SGD).load_state_dict(sd)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frozen": torch.tensor([True, False])}, "frozen as a bool mask must have shape"),
        ({"frozen": [True, False, True, False]}, "frozen must hold int class indices"),
        ({"lr_scale": torch.ones(C, 1)}, "lr_scale must be a 1-D tensor"),
        ({"weight_decay": [0.1] * (C + 1)}, "weight_decay has 5 entries"),
    ],
)
def test_construction_refuses_wrong_lengths(kwargs: dict[str, Any], match: str):
    h = head()
    with pytest.raises((ValueError, TypeError), match=match):
        lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h, **kwargs)


def test_route_refuses_closure_optimizers():
    a = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="closure"):
        lg.route({"a": (torch.optim.LBFGS(a.parameters()), [0, 1])})


# -- issue 15: GradScaler.step(router) ----------------------------------------------------------


def test_grad_scaler_steps_a_router_like_the_plain_route():
    """Before: AttributeError (no param_groups). Now scaler.step(router) unscales every
    optimizer's gradients, skips everything on inf, and otherwise routes."""

    def build(seed: int) -> tuple[nn.Module, lg.Router]:
        torch.manual_seed(seed)
        model = nn.ModuleDict(
            {"trunk": nn.Linear(3, 3), "a": nn.Linear(3, 2), "b": nn.Linear(3, 2)}
        )
        router = lg.route(
            {
                "a": (torch.optim.Adam(model["a"].parameters(), lr=0.1), [0, 1]),
                "b": (torch.optim.SGD(model["b"].parameters(), lr=0.1, momentum=0.9), [2, 3]),
            },
            always=[torch.optim.SGD(model["trunk"].parameters(), lr=0.1)],
        )
        return model, router

    def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        h = model["trunk"](x).relu()
        return nn.functional.cross_entropy(torch.cat([model["a"](h), model["b"](h)], 1), y)

    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 0])  # no class of "b"
    scaled, router = build(0)
    plain, ref = build(0)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    router.zero_grad()
    scaler.scale(loss(scaled, x, y)).backward()
    router.observe(y)
    scaler.step(router)
    scaler.update()
    ref.zero_grad()
    loss(plain, x, y).backward()
    ref.step(targets=y)
    for p, q in zip(scaled.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q)
    # inf: nothing steps, and zero_grad forgets the batch's classes
    before = [p.detach().clone() for p in scaled.parameters()]
    router.zero_grad()
    scaler.scale(loss(scaled, x, y)).backward()
    assert scaled["trunk"].weight.grad is not None
    scaled["trunk"].weight.grad[0, 0] = float("inf")
    router.observe(y)
    scaler.step(router)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(scaled.parameters(), before))
    router.zero_grad()
    with pytest.raises(RuntimeError, match="targets"):
        router.step()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "snapshot"])
def test_a_tensor_without_gradient_keeps_its_own_first_moves(fast: bool):
    """The weight and bias share their "rows started" mask until a step moves one of them
    only (the bias has no gradient): the bias row then still starts fresh later."""
    h = head(seed=6)
    opt = lg.RowRules(
        torch.optim.SGD(h.parameters(), lr=0.1, momentum=0.9, dampening=0.5),
        rows=h,
        skip_absent=True,
        fast=fast,
    )
    set_grads(h, 0)
    opt.step(targets=torch.tensor([0]))  # creates both buffers; row 0 starts
    set_grads(h, 1)
    h.bias.grad = None
    opt.step(targets=torch.tensor([1]))  # weight row 1 starts, bias row 1 does not
    set_grads(h, 2)
    opt.step(targets=torch.tensor([1]))
    gw1, gw2, gb2 = grads(1)[0][1], grads(2)[0][1], grads(2)[1][1]
    torch.testing.assert_close(opt.state[h.bias]["momentum_buffer"][1], gb2)  # first move
    torch.testing.assert_close(opt.state[h.weight]["momentum_buffer"][1], 0.9 * gw1 + 0.5 * gw2)
