"""Hostile review of level 2 (RowRules, route, post-hoc row operations), per HOSTILE.md.

Written by a reviewer who did not write the code, from the public API only. References are
independent: a split-parameter optimizer (each class row its own parameter, in its own param
group with ``lr * lr_scale[c]``; frozen and absent rows are simply not stepped), the plain step
followed by a float64 projection for ``max_norm``, and the float64 formulas for
``tau_normalize`` and ``align_weights``. Each test names the HOSTILE class it attacks.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg

C, D = 4, 3
optim = torch.optim
NAN, INF = float("nan"), float("inf")
HALF = [torch.float16, torch.bfloat16]

# Every optimizer family, with the flags that change the code path.
OPTIMIZERS: dict[str, tuple[type[optim.Optimizer], dict[str, Any]]] = {
    "sgd": (optim.SGD, {"lr": 0.1}),
    "sgd_nesterov_wd": (
        optim.SGD,
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    ),
    "sgd_dampening": (optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}),
    "sgd_foreach": (optim.SGD, {"lr": 0.1, "momentum": 0.9, "foreach": True}),
    "adam": (optim.Adam, {"lr": 0.01}),
    "adam_amsgrad_wd": (optim.Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    "adam_foreach": (optim.Adam, {"lr": 0.01, "foreach": True}),
    "adam_maximize": (optim.Adam, {"lr": 0.01, "maximize": True}),
    "adamw": (optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    "adagrad": (optim.Adagrad, {"lr": 0.1}),
    "nadam": (optim.NAdam, {"lr": 0.01}),
    "radam": (optim.RAdam, {"lr": 0.01}),
    "asgd": (optim.ASGD, {"lr": 0.01}),
    "adamax": (optim.Adamax, {"lr": 0.01}),
    "rmsprop_centered": (optim.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True}),
    "rprop": (optim.Rprop, {"lr": 0.01}),
    "adadelta": (optim.Adadelta, {"lr": 1.0}),
}
# Optimizers whose update does not read the step counter, so that a row resting for a step
# (whose tensor's counter still advances, as documented) matches a parameter of its own.
NO_COUNTER = ["sgd", "sgd_nesterov_wd", "sgd_dampening", "sgd_foreach", "rmsprop_centered"]


def grad_seq(n: int, dtype: torch.dtype, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(C, D, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(C, generator=g, dtype=torch.float64).to(dtype),
        )
        for _ in range(n)
    ]


def start(dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, D, generator=g, dtype=torch.float64).to(dtype)
    return w, torch.randn(C, generator=g, dtype=torch.float64).to(dtype)


def split_reference(
    name: str,
    w: Tensor,
    b: Tensor,
    grads: list[tuple[Tensor, Tensor]],
    *,
    moves: Callable[[int, int], bool] = lambda t, c: True,
    lr_scale: list[float] | None = None,
) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Each class row and bias entry its own parameters, in its own optimizer whose lr is
    ``lr * lr_scale[c]``; row c is stepped at step t only if ``moves(t, c)``."""
    cls, kw = OPTIMIZERS[name]
    rows = [nn.Parameter(w[c].clone()) for c in range(C)]
    bias = [nn.Parameter(b[c : c + 1].clone()) for c in range(C)]
    opts = []
    for c in range(C):
        ckw = dict(kw)
        if lr_scale is not None:
            ckw["lr"] = kw["lr"] * lr_scale[c]
        opts.append(cls([rows[c], bias[c]], **ckw))
    for t, (gw, gb) in enumerate(grads):
        for c in range(C):
            if moves(t, c):
                rows[c].grad, bias[c].grad = gw[c].clone(), gb[c : c + 1].clone()
                opts[c].step()
    weight = torch.stack([r.detach() for r in rows])
    return weight, torch.cat([x.detach() for x in bias]), [o.state_dict()["state"] for o in opts]


def ruled(name: str, w: Tensor, b: Tensor, **rules: Any) -> tuple[nn.Linear, lg.RowRules]:
    cls, kw = OPTIMIZERS[name]
    h = nn.Linear(D, C, dtype=w.dtype)
    with torch.no_grad():
        h.weight.copy_(w)
        h.bias.copy_(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lr_scale on Rprop/ASGD warns by design
        return h, lg.RowRules(cls(h.parameters(), **kw), rows=h, **rules)


def run(
    h: nn.Linear,
    opt: lg.RowRules,
    grads: list[tuple[Tensor, Tensor]],
    targets: list[Tensor] | None = None,
) -> None:
    for t, (gw, gb) in enumerate(grads):
        h.weight.grad, h.bias.grad = gw.clone(), gb.clone()
        if targets is None:
            opt.step()
        else:
            opt.step(targets=targets[t])


def row_state(opt: lg.RowRules, p: Tensor, rows: list[int]) -> dict[str, Tensor]:
    """The state tensors of ``p`` shaped like it, restricted to ``rows``."""
    return {
        k: v[rows].clone()
        for k, v in opt.optimizer.state[p].items()
        if isinstance(v, Tensor) and v.shape == p.shape
    }


# -- 3. Precision: half-precision heads --------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(
    "name", ["adam", "adamw", "adam_amsgrad_wd", "sgd", "sgd_nesterov_wd", "sgd_foreach"]
)
def test_half_precision_frozen_rows_match_split_parameters(
    name: str, dtype: torch.dtype, fast: bool
):
    """A float16 Adam head with a frozen row used to turn the frozen row into NaN: the fast
    kernel's ``eps * sqrt(1 - beta2**t)`` is 0 in float16, so a resting row's update was 0/0;
    and the SGD kernel rounded momentum and lr to the parameter's dtype (0.9 is 0.8984375 in
    bfloat16). Every row now moves exactly as its own parameter would, and the frozen row keeps
    its bits."""
    w, b = start(dtype)
    grads = grad_seq(3, dtype)
    h, opt = ruled(name, w, b, frozen=[1], fast=fast)
    run(h, opt, grads)
    ref_w, ref_b, _ = split_reference(name, w, b, grads, moves=lambda t, c: c != 1)
    assert torch.equal(h.weight.detach(), ref_w)
    assert torch.equal(h.bias.detach(), ref_b)
    assert torch.equal(h.weight.detach()[1], w[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_nonfinite_gradients_of_resting_rows_never_reach_them(name: str, dtype: torch.dtype):
    """Without a GradScaler, NaN/inf gradients in a frozen row and in an absent row: those rows
    and their optimizer state keep their bits (the optimizer itself may see the values)."""
    w, b = start(dtype, seed=1)
    grads = grad_seq(3, dtype)
    for gw, gb in grads:
        gw[1, 0], gb[1], gw[3, 1], gb[3] = NAN, INF, -INF, NAN
    targets = [torch.tensor([0, 2]), torch.tensor([0]), torch.tensor([2, 2, 0])]
    for fast in (True, False):
        h, opt = ruled(name, w, b, frozen=[1], skip_absent=True, fast=fast)
        h.weight.grad, h.bias.grad = grads[0][0].clone(), grads[0][1].clone()
        opt.step(targets=targets[0])
        before = row_state(opt, h.weight, [1, 3])
        run(h, opt, grads[1:], targets[1:])
        assert torch.equal(h.weight.detach()[[1, 3]], w[[1, 3]]), (name, fast)
        assert torch.equal(h.bias.detach()[[1, 3]], b[[1, 3]]), (name, fast)
        after = row_state(opt, h.weight, [1, 3])
        for k, v in before.items():
            assert torch.equal(after[k], v), (name, fast, k)
        assert torch.isfinite(h.weight.detach()[[0, 2]]).all()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name", NO_COUNTER)
def test_absent_and_frozen_rows_match_split_parameters(name: str, fast: bool):
    """skip_absent + frozen against the split reference, bitwise, float64, optimizer state
    included (optimizers without a step counter: no shared-counter caveat)."""
    w, b = start(torch.float64, seed=2)
    grads = grad_seq(5, torch.float64, seed=3)
    targets = [
        torch.tensor([0, 2]),
        torch.tensor([0]),
        torch.zeros(0, dtype=torch.long),  # N = 0: nothing moves
        torch.tensor([-100, -100]),  # all ignored: nothing moves
        torch.tensor([3, 2]),
    ]
    h, opt = ruled(name, w, b, frozen=[1], skip_absent=True, fast=fast)
    run(h, opt, grads, targets)

    def moves(t: int, c: int) -> bool:
        return c != 1 and c in targets[t].tolist()

    ref_w, ref_b, ref_state = split_reference(name, w, b, grads, moves=moves)
    assert torch.equal(h.weight.detach(), ref_w)
    assert torch.equal(h.bias.detach(), ref_b)
    state = opt.optimizer.state[h.weight]
    for c in range(C):
        for k, v in ref_state[c].get(0, {}).items():
            if isinstance(v, Tensor) and v.dim() > 0:
                assert torch.equal(state[k][c], v), (c, k)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    "name", ["adam", "adamw", "sgd_nesterov_wd", "adagrad", "rmsprop_centered"]
)
def test_param_groups_with_different_lr_and_lr_scale(name: str, fast: bool):
    """Weight and bias in param groups with different lr, per-class lr_scale (0 included) and a
    frozen row: each row ends where its own parameter with lr * lr_scale[c] would (float64,
    to a few ulps: the scaled update is computed, not stepped)."""
    cls, kw = OPTIMIZERS[name]
    scale = [1.0, 0.5, 0.25, 0.0]
    w, b = start(torch.float64, seed=4)
    grads = grad_seq(3, torch.float64, seed=5)
    h = nn.Linear(D, C, dtype=torch.float64)
    with torch.no_grad():
        h.weight.copy_(w)
        h.bias.copy_(b)
    groups = [{"params": [h.weight], "lr": 0.1}, {"params": [h.bias], "lr": 0.01}]
    kw = {k: v for k, v in kw.items() if k != "lr"}
    opt = lg.RowRules(cls(groups, **kw), rows=h, lr_scale=scale, frozen=[1], fast=fast)
    run(h, opt, grads)
    for c in range(C):
        rw, rb = nn.Parameter(w[c].clone()), nn.Parameter(b[c : c + 1].clone())
        ref = cls(
            [{"params": [rw], "lr": 0.1 * scale[c]}, {"params": [rb], "lr": 0.01 * scale[c]}],
            **kw,
        )
        for gw, gb in grads if c != 1 else []:
            rw.grad, rb.grad = gw[c].clone(), gb[c : c + 1].clone()
            ref.step()
        torch.testing.assert_close(h.weight.detach()[c], rw.detach(), rtol=1e-13, atol=1e-16)
        torch.testing.assert_close(h.bias.detach()[c : c + 1], rb.detach(), rtol=1e-13, atol=1e-16)
    assert torch.equal(h.weight.detach()[[1, 3]], w[[1, 3]])  # frozen, and lr_scale 0


# -- max_norm: the plain step, then a float64 projection -----------------------------------------


def project64(w: Tensor, radius: float) -> Tensor:
    w64 = w.double()
    norm = w64.norm(dim=1, keepdim=True)
    r = torch.tensor(radius, dtype=torch.float64)  # a true division (``0.3 / t`` is 0.3 * 1/t)
    factor = torch.where(norm > r, r / norm, torch.ones_like(norm))
    return (w64 * factor).to(w.dtype)


@pytest.mark.parametrize("radius", [0.3, 1e-6, 1e-40, 1e39])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF])
@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop_centered"])
def test_max_norm_is_the_plain_step_then_a_float64_projection(
    name: str, dtype: torch.dtype, radius: float
):
    """Float32 rows were projected with a float32 factor (two roundings): about one entry in four
    ended an ulp away from the float64 projection. Radii tiny (float32 subnormal) and beyond
    float32's range included."""
    g = torch.Generator().manual_seed(6)
    w = (torch.randn(64, 7, generator=g, dtype=torch.float64) * 3).to(dtype)
    gw = torch.randn(64, 7, generator=g, dtype=torch.float64).to(dtype)
    cls, kw = OPTIMIZERS[name]
    plain, ours = nn.Parameter(w.clone()), nn.Parameter(w.clone())
    ref_opt = cls([plain], **kw)
    opt = lg.RowRules(cls([ours], **kw), rows=ours, max_norm=radius)
    for _ in range(2):
        plain.grad, ours.grad = gw.clone(), gw.clone()
        ref_opt.step()
        with torch.no_grad():
            plain.copy_(project64(plain.detach(), radius))
        opt.step()
        # torch's own float16 Adam overflows some entries (its eps is 0 in float16): NaN == NaN.
        torch.testing.assert_close(ours.detach(), plain.detach(), rtol=0, atol=0, equal_nan=True)


# -- 4. State and aliasing ------------------------------------------------------------------------


def full_rules(h: nn.Linear) -> lg.RowRules:
    return lg.RowRules(
        optim.SGD(h.parameters(), lr=0.1),
        rows=h,
        frozen=[1],
        lr_scale=[1.0, 1.0, 0.5, 1.0],
        weight_decay=[0.0, 0.1, 0.0, 0.0],
        max_norm=[1.0, 2.0, 3.0, 4.0],
    )


@pytest.mark.parametrize("key", ["frozen", "lr_scale", "weight_decay", "max_norm"])
def test_state_dict_does_not_alias_the_rules(key: str):
    """``state_dict()["row_rules"][key]`` was the RowRules' own tensor on the CPU (``.cpu()``
    returns the tensor itself): editing the checkpoint changed the live rules."""
    opt = full_rules(nn.Linear(D, C))
    before = getattr(opt, key)
    saved = opt.state_dict()["row_rules"][key]
    saved.fill_(True) if saved.dtype == torch.bool else saved.fill_(9.0)
    assert torch.equal(getattr(opt, key), before)


@pytest.mark.parametrize("key", ["frozen", "lr_scale"])
def test_load_state_dict_does_not_alias_the_checkpoint(key: str):
    """Rules restored from a state dict were the state dict's tensors: loading one checkpoint
    into two RowRules, or editing it afterwards, changed the loaded rules."""
    sd = full_rules(nn.Linear(D, C)).state_dict()
    opt = full_rules(nn.Linear(D, C))
    opt.load_state_dict(sd)
    before = getattr(opt, key)
    saved = sd["row_rules"][key]
    saved.fill_(True) if saved.dtype == torch.bool else saved.fill_(9.0)
    assert torch.equal(getattr(opt, key), before)


@pytest.mark.parametrize("attr", ["frozen", "lr_scale", "weight_decay", "max_norm", "present"])
def test_returned_rules_are_copies(attr: str):
    opt = full_rules(nn.Linear(D, C))
    opt.observe(torch.tensor([0, 2]))
    before = getattr(opt, attr)
    got = getattr(opt, attr)
    got.fill_(True) if got.dtype == torch.bool else got.fill_(9.0)
    assert torch.equal(getattr(opt, attr), before)


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("lr_scale", [1.0, NAN, 1.0, 1.0]),
        ("lr_scale", INF),
        ("lr_scale", -1.0),
        ("weight_decay", [0.0, NAN, 0.0, 0.0]),
        ("max_norm", [1.0, NAN, 1.0, 1.0]),
        ("max_norm", -0.5),
        ("frozen", [C]),
    ],
)
def test_bad_rules_are_refused_naming_the_argument(arg: str, value: object):
    h = nn.Linear(D, C)
    with pytest.raises((ValueError, TypeError), match=arg):
        lg.RowRules(optim.SGD(h.parameters(), lr=0.1), rows=h, **{arg: value})


def test_lr_scale_setter_checks_and_warns_as_the_constructor():
    """The setter refuses NaN naming lr_scale, and on an optimizer whose update is not linear in
    lr (Rprop) warns as the constructor does (it used to set the rule silently)."""
    h = nn.Linear(D, C)
    opt = lg.RowRules(optim.Rprop(h.parameters(), lr=0.01), rows=h)
    with pytest.raises(ValueError, match="lr_scale"):
        opt.lr_scale = [1.0, NAN, 1.0, 1.0]
    with pytest.warns(UserWarning, match="lr_scale"):
        opt.lr_scale = 0.5
    sgd = lg.RowRules(optim.SGD(h.parameters(), lr=0.1), rows=h)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sgd.lr_scale = 0.5  # linear in lr: no warning


def test_state_dict_with_nan_rule_is_refused():
    opt = full_rules(nn.Linear(D, C))
    sd = copy.deepcopy(opt.state_dict())
    sd["row_rules"]["lr_scale"][1] = NAN
    with pytest.raises(ValueError, match="lr_scale"):
        full_rules(nn.Linear(D, C)).load_state_dict(sd)


RESUME_RULES = {
    "skip_absent+frozen+unfreeze": {"skip_absent": True, "frozen": [3]},
    "skip_absent+lr_scale+max_norm": {
        "skip_absent": True,
        "lr_scale": [1.0, 0.5, 2.0, 1.0],
        "max_norm": 0.5,
    },
}


@pytest.mark.parametrize("rules", list(RESUME_RULES))
@pytest.mark.parametrize("name", ["adam", "sgd_nesterov_wd", "rprop", "nadam", "asgd", "adagrad"])
def test_resume_mid_training_is_bitwise_the_uninterrupted_run(name: str, rules: str):
    """Checkpoint (torch.save round trip) after 3 of 6 steps, load into an instance built from
    another model state, continue: the same bits as never stopping (rows starting late and
    unfreezing after the checkpoint included)."""
    targets = [
        torch.tensor([0, 0]),
        torch.tensor([2]),
        torch.tensor([1, 2]),
        torch.tensor([3]),
        torch.tensor([0, 3]),
        torch.tensor([1]),
    ]
    grads = grad_seq(6, torch.float32, seed=7)
    rr = RESUME_RULES[rules]
    w, b = start(torch.float32, seed=8)

    def steps(h: nn.Linear, opt: lg.RowRules, ts: range) -> None:
        for t in ts:
            h.weight.grad, h.bias.grad = grads[t][0].clone(), grads[t][1].clone()
            if t == 4 and "frozen" in rr:
                opt.unfreeze([3])
            opt.step(targets=targets[t])

    h, opt = ruled(name, w, b, **rr)
    steps(h, opt, range(6))
    h2, opt2 = ruled(name, w, b, **rr)
    steps(h2, opt2, range(3))
    buf = io.BytesIO()
    torch.save({"model": h2.state_dict(), "opt": opt2.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf)
    h3, opt3 = ruled(name, *start(torch.float32, seed=9), **rr)
    h3.load_state_dict(ck["model"])
    opt3.load_state_dict(ck["opt"])
    steps(h3, opt3, range(3, 6))
    assert torch.equal(h3.weight.detach(), h.weight.detach())
    assert torch.equal(h3.bias.detach(), h.bias.detach())


def test_load_into_instance_built_with_other_fixed_rules_is_refused():
    sd = full_rules(nn.Linear(D, C)).state_dict()
    h = nn.Linear(D, C)
    other = lg.RowRules(optim.SGD(h.parameters(), lr=0.1), rows=h, max_norm=[1.0, 2.0, 3.0, 5.0])
    with pytest.raises(ValueError, match=r"max_norm|weight_decay"):
        other.load_state_dict(sd)
    bigger = nn.Linear(D, C + 1)
    with pytest.raises(ValueError, match="num_classes"):
        lg.RowRules(optim.SGD(bigger.parameters(), lr=0.1), rows=bigger).load_state_dict(sd)


# -- 5. Labels ------------------------------------------------------------------------------------


def present_reference(kind: str, y: Tensor) -> list[bool]:
    """Direct: index -> the classes named (not ignore_index); multi-hot -> a 1 anywhere;
    soft -> a probability >= 0.5 anywhere (the documented rule)."""
    if kind == "index":
        return [bool((y == c).any()) for c in range(C)]
    if kind == "multi_hot":
        return [bool((y[:, c] == 1).any()) for c in range(C)]
    return [bool((y[:, c] >= 0.5).any()) for c in range(C)]


LABELS: list[tuple[str, Tensor, dict[str, Any]]] = [
    ("index", torch.tensor([2, 0, 2, -100]), {}),
    ("index", torch.tensor([2, 255, 0]), {"ignore_index": 255}),
    ("index", torch.tensor([[1, 255], [1, 1]]), {"encoding": "index", "ignore_index": 255}),
    ("index", torch.zeros(0, dtype=torch.long), {}),
    ("index", torch.full((3,), -100), {}),
    ("multi_hot", torch.tensor([[1, 0, -1, 0], [0, 0, 0, 1]]), {"encoding": "multi_hot"}),
    ("multi_hot", torch.tensor([[True, False, False, False]]), {}),
    (
        "multi_hot",
        torch.tensor([[1.0, 0.0, -1.0, 0.0]], dtype=torch.float64),
        {"encoding": "multi_hot"},
    ),
    ("multi_hot", -torch.ones(2, C), {"encoding": "multi_hot"}),  # all unknown
    ("multi_hot", torch.zeros(0, C), {"encoding": "multi_hot"}),
    ("soft", torch.tensor([[0.3, 0.7, 0.0, -1.0]]), {}),
    ("soft", torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=torch.float64), {"encoding": "soft"}),
]


@pytest.mark.parametrize(("kind", "y", "kw"), LABELS)
def test_present_classes_for_every_encoding(kind: str, y: Tensor, kw: dict[str, Any]):
    ref = present_reference(kind, y)
    assert lg.rows.present_classes(y, C, **kw).tolist() == ref
    # RowRules and a Router see the same classes.
    h = nn.Linear(D, C)
    opt = lg.RowRules(optim.SGD(h.parameters(), lr=0.1), rows=h, skip_absent=True)
    opt.observe(y, **kw)
    assert opt.present.tolist() == ref


def test_integer_labels_of_two_dimensions_need_an_encoding():
    h = nn.Linear(D, C)
    opt = lg.RowRules(optim.SGD(h.parameters(), lr=0.1), rows=h, skip_absent=True)
    with pytest.raises(ValueError, match="encoding"):
        opt.observe(torch.tensor([[1, 0, 0, 1]]))
    with pytest.raises(ValueError, match="out of range"):
        opt.observe(torch.tensor([C]))  # a class never declared


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name", ["adam", "sgd_nesterov_wd", "rprop", "rmsprop_centered"])
def test_batch_with_no_present_class_moves_nothing(name: str, fast: bool):
    """N = 0, all ignored, all unknown: with skip_absent no row and no state moves."""
    w, b = start(torch.float32, seed=10)
    grads = grad_seq(4, torch.float32, seed=11)
    h, opt = ruled(name, w, b, skip_absent=True, fast=fast)
    run(h, opt, grads[:1], [torch.tensor([0, 1, 2, 3])])
    w1, b1 = h.weight.detach().clone(), h.bias.detach().clone()
    state = copy.deepcopy(row_state(opt, h.weight, list(range(C))))
    empty = [torch.zeros(0, dtype=torch.long), torch.full((2,), -100), -torch.ones(2, C)]
    for t, y in enumerate(empty):
        h.weight.grad, h.bias.grad = grads[t + 1][0].clone(), grads[t + 1][1].clone()
        enc = "multi_hot" if y.dim() == 2 else None
        opt.step(targets=y, encoding=enc)
    assert torch.equal(h.weight.detach(), w1) and torch.equal(h.bias.detach(), b1)
    for k, v in row_state(opt, h.weight, list(range(C))).items():
        assert torch.equal(v, state[k]), k


# -- 2. Graphs ------------------------------------------------------------------------------------


def test_rows_without_gradients_are_left_alone():
    """A head frozen with requires_grad=False, or computed under no_grad: no gradient, so no
    step and no projection, whatever the rules."""
    h = nn.Linear(D, C)
    h.weight.requires_grad_(False)
    w0 = h.weight.detach().clone()
    opt = lg.RowRules(
        optim.Adam(h.parameters(), lr=0.1), rows=h, frozen=[0], skip_absent=True, max_norm=1e-3
    )
    h.eval()
    with torch.no_grad():
        h(torch.randn(2, D))
    h.bias.grad = torch.ones(C)
    opt.step(targets=torch.tensor([1, 2]))
    assert torch.equal(h.weight, w0)


# -- Composition: GradScaler, schedulers, route + always + RowRules --------------------------------


@pytest.mark.parametrize("name", ["adam", "sgd_nesterov_wd", "rmsprop_centered"])
def test_grad_scaler_sees_nonfinite_gradients_untouched_and_skips(name: str):
    cls, kw = OPTIMIZERS[name]
    torch.manual_seed(0)
    h = nn.Linear(D, C)
    opt = lg.RowRules(cls(h.parameters(), **kw), rows=h, frozen=[1], skip_absent=True, max_norm=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    y = torch.tensor([0, 2, 2, 3])
    for bad in (False, True):
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(h(torch.randn(4, D)), y)).backward()
        if bad:
            h.weight.grad[1, 0] = INF  # in a frozen row: the scaler must still see it
        grad = h.weight.grad.clone()
        opt.observe(y)
        assert (
            torch.equal(
                h.weight.grad,
                grad,
            )
            or not bad
        )
        w0, sd0 = h.weight.detach().clone(), copy.deepcopy(opt.optimizer.state_dict())
        scaler.step(opt)
        scaler.update()
    assert torch.equal(h.weight.detach(), w0)
    assert str(opt.optimizer.state_dict()) == str(sd0)
    assert scaler.get_scale() == 2.0  # the step was skipped and the scale backed off


def test_lr_scheduler_on_row_rules_matches_split_parameters():
    """StepLR on the RowRules: no 'step order' warning, and each row follows its own
    scheduled lr * lr_scale[c]."""
    scale = [1.0, 0.5, 0.25, 1.0]
    w, b = start(torch.float64, seed=12)
    grads = grad_seq(3, torch.float64, seed=13)
    h, opt = ruled("sgd_nesterov_wd", w, b, lr_scale=scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        for gw, gb in grads:
            h.weight.grad, h.bias.grad = gw.clone(), gb.clone()
            opt.step()
            sched.step()
    cls, kw = OPTIMIZERS["sgd_nesterov_wd"]
    for c in range(C):
        rw, rb = nn.Parameter(w[c].clone()), nn.Parameter(b[c : c + 1].clone())
        ref = cls([rw, rb], **{**kw, "lr": kw["lr"] * scale[c]})
        ref_sched = optim.lr_scheduler.StepLR(ref, 1, gamma=0.5)
        for gw, gb in grads:
            rw.grad, rb.grad = gw[c].clone(), gb[c : c + 1].clone()
            ref.step()
            ref_sched.step()
        torch.testing.assert_close(h.weight.detach()[c], rw.detach(), rtol=1e-13, atol=1e-16)


def test_route_always_row_rules_and_grad_scaler():
    """A RowRules over the whole head in ``always=``, routed adapters per class group, under a
    GradScaler: the RowRules gets the router's targets (absent rows rest), a skipped step moves
    nothing, and a routed group whose classes are absent keeps its bits."""
    torch.manual_seed(0)
    adapters = nn.ModuleList([nn.Linear(D, D), nn.Linear(D, D)])
    h = nn.Linear(D, C)
    head_opt = lg.RowRules(optim.Adam(h.parameters(), lr=0.1), rows=h, skip_absent=True)
    router = lg.route(
        {
            "low": (optim.SGD(adapters[0].parameters(), lr=0.1, momentum=0.9), [0, 1]),
            "high": (optim.Adam(adapters[1].parameters(), lr=0.1), [2, 3]),
        },
        always=[head_opt],
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)

    def loss(y: Tensor) -> Tensor:
        x = torch.randn(len(y), D)
        return nn.functional.cross_entropy(h(adapters[0](x) + adapters[1](x)), y)

    y = torch.tensor([0, 1, 1])  # only the "low" group
    router.zero_grad()
    scaler.scale(loss(y)).backward()
    router.observe(y)
    high0 = [p.detach().clone() for p in adapters[1].parameters()]
    w0 = h.weight.detach().clone()
    scaler.step(router)
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(adapters[1].parameters(), high0, strict=True))
    assert torch.equal(h.weight[2:], w0[2:]) and not torch.equal(h.weight[:2], w0[:2])
    # A skipped step (inf in the resting group's gradient) moves nothing at all.
    router.zero_grad()
    scaler.scale(loss(y)).backward()
    next(iter(adapters[1].parameters())).grad[0, 0] = INF
    router.observe(y)
    snap = [p.detach().clone() for p in [*adapters.parameters(), *h.parameters()]]
    scaler.step(router)
    scaler.update()
    after = [p.detach() for p in [*adapters.parameters(), *h.parameters()]]
    assert all(torch.equal(p, q) for p, q in zip(after, snap, strict=True))


def test_route_refuses_a_row_rules_over_another_class_set():
    """A RowRules over a group's own 2-row head cannot be routed with global class ids: a clear
    error naming the group, not a silent remapping."""
    ha, hb = nn.Linear(D, 2), nn.Linear(D, 2)
    sub = lg.RowRules(optim.Adam(ha.parameters(), lr=0.1), rows=ha)
    with pytest.raises(ValueError, match="groups\\['a'\\]"):
        lg.route({"a": (sub, [0, 1]), "b": (optim.SGD(hb.parameters(), lr=0.1), [2, 3])})


# -- Post-hoc row operations against float64 formulas -------------------------------------------


def norm64(row: Tensor) -> float:
    """The L2 norm of a float64 row, written out; entries are first divided by a power of two
    near the largest (exact), so that squares of 1e200 or 1e-200 stay in range."""
    top = float(row.abs().max())
    if top == 0:
        return 0.0
    scale = math.ldexp(1.0, math.frexp(top)[1])
    return float(torch.linalg.vector_norm(row / scale)) * scale


def tau_reference(w: Tensor, tau: float) -> Tensor:
    w64 = w.double()
    out = torch.empty_like(w64)
    for c in range(w.shape[0]):
        n = norm64(w64[c])
        out[c] = w64[c] if n == 0 else w64[c] / torch.tensor(n**tau, dtype=torch.float64)
    return out.to(w.dtype)


# Magnitudes inside each dtype's range whose squares (or the squares' sum) leave it.
MAGNITUDES = [
    (torch.float16, 1.0),
    (torch.float16, 1e-3),
    (torch.float16, 3e3),
    (torch.bfloat16, 1e-30),
    (torch.bfloat16, 1e30),
    (torch.float32, 1.0),
    (torch.float32, 1e-30),
    (torch.float32, 1e30),
    (torch.float64, 1.0),
    (torch.float64, 1e-200),
    (torch.float64, 1e200),
]


def rows_of(dtype: torch.dtype, magnitude: float, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(6, 5, generator=g, dtype=torch.float64) * magnitude).to(dtype)
    assert torch.isfinite(w).all() and (w != 0).all()
    return w


@pytest.mark.parametrize(("dtype", "magnitude"), MAGNITUDES)
@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_tau_normalize_is_the_float64_formula(tau: float, dtype: torch.dtype, magnitude: float):
    w = rows_of(dtype, magnitude, 14)
    w[2] = 0.0
    if tau == 2.0 and magnitude > 1e100:
        tau = 1.5  # ||w||^2 itself leaves float64
    got = lg.rows.tau_normalize(w, tau=tau)
    assert torch.equal(got, tau_reference(w, tau))
    head = nn.Linear(5, 6, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(w)
    bias = head.bias.detach().clone()
    out = lg.rows.tau_normalize(head, tau=tau, inplace=True)
    assert out is head and torch.equal(head.weight.detach(), tau_reference(w, tau))
    assert torch.equal(head.bias.detach(), bias)


def test_tau_normalize_refuses_bad_tau():
    w = torch.randn(3, 2)
    for tau in (NAN, INF, -1.0):
        with pytest.raises(ValueError, match="tau"):
            lg.rows.tau_normalize(w, tau=tau)
    with pytest.raises(TypeError, match="tau"):
        lg.rows.tau_normalize(w, tau=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(("dtype", "magnitude"), MAGNITUDES)
def test_align_weights_is_the_float64_formula(dtype: torch.dtype, magnitude: float):
    w = rows_of(dtype, magnitude, 15)
    new, old = [4, 5], [0, 1, 2]  # class 3 is neither: keeps its bits
    w64 = w.double()
    norms = torch.tensor([norm64(w64[c]) for c in range(6)], dtype=torch.float64)
    gamma = norms[old].mean() / norms[new].mean()
    ref = w64.clone()
    ref[new] = w64[new] * gamma
    mask = torch.zeros(6, dtype=torch.bool)
    mask[new] = True
    for new_arg in (new, mask):
        got = lg.rows.align_weights(w, new_classes=new_arg, old_classes=old)
        assert torch.equal(got, ref.to(dtype))
        assert torch.equal(got[3], w[3])


def test_align_weights_refusals_name_the_argument():
    w = torch.randn(4, 2)
    with pytest.raises(ValueError, match="new_classes"):
        lg.rows.align_weights(w, new_classes=[])
    with pytest.raises(ValueError, match="both old and new"):
        lg.rows.align_weights(w, new_classes=[1], old_classes=[1, 2])
    with pytest.raises(ValueError, match="old classes"):
        lg.rows.align_weights(w, new_classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="new_classes"):
        lg.rows.align_weights(w, new_classes=[4])


@pytest.mark.parametrize("fast", [True, False])
def test_accumulation_window_with_row_rules(fast: bool):
    """Micro-batches observed one by one inside ``lg.accumulation_window`` (with a stateful
    policy): the present classes are their union, and the step equals one batch holding both.
    ``accumulation_window`` itself takes modules: a RowRules passed to it is a clear error."""
    torch.manual_seed(0)
    x, y = torch.randn(4, D), torch.tensor([0, 0, 2, 2])
    h1 = nn.Linear(D, C)
    h2 = copy.deepcopy(h1)
    w0 = h1.weight.detach().clone()
    opt1 = lg.RowRules(optim.Adam(h1.parameters(), lr=0.1), rows=h1, skip_absent=True, fast=fast)
    opt2 = lg.RowRules(optim.Adam(h2.parameters(), lr=0.1), rows=h2, skip_absent=True, fast=fast)
    policy = lg.eqlv2(num_classes=C)
    with lg.accumulation_window(policy):
        for part in (slice(0, 2), slice(2, 4)):
            nn.functional.cross_entropy(h1(x[part]), y[part], reduction="sum").backward()
            opt1.observe(y[part])
    opt1.step()
    nn.functional.cross_entropy(h2(x), y, reduction="sum").backward()
    opt2.step(targets=y)
    torch.testing.assert_close(h1.weight, h2.weight, rtol=1e-6, atol=1e-7)
    assert torch.equal(h1.weight[[1, 3]], w0[[1, 3]])  # absent from both micro-batches
    assert not torch.equal(h1.weight[[0, 2]], w0[[0, 2]])
    with pytest.raises(TypeError, match=r"nn\.Module"), lg.accumulation_window(opt1):  # type: ignore[arg-type]
        pass


def test_a_parameter_shared_between_optimizers_is_refused():
    """A trunk parameter in a routed optimizer and in ``always=``: refused naming both, not
    stepped twice."""
    trunk, ha, hb = nn.Linear(D, D), nn.Linear(D, 2), nn.Linear(D, 2)
    shared = [*ha.parameters(), trunk.weight]
    with pytest.raises(ValueError, match=r"'a'.*always\[0\]"):
        lg.route(
            {
                "a": (optim.SGD(shared, lr=0.1), [0, 1]),
                "b": (optim.SGD(hb.parameters(), lr=0.1), [2, 3]),
            },
            always=[optim.SGD(trunk.parameters(), lr=0.1)],
        )
