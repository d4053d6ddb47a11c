"""RowRules against a split-parameter reference: every row its own parameter and param group."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.rows.families import family as families_family

C, D = 5, 3
DT = torch.float64
LR = 0.05

OptFactory = Callable[..., torch.optim.Optimizer]

# name -> (optimizer class, extra kwargs); foreach / fused / weight decay are crossed below.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {}),
    "sgd_momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "sgd_nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {}),
    "adam_amsgrad": (torch.optim.Adam, {"amsgrad": True}),
    "adamw": (torch.optim.AdamW, {}),
    "rmsprop": (torch.optim.RMSprop, {}),
    "rmsprop_centered_momentum": (torch.optim.RMSprop, {"momentum": 0.5, "centered": True}),
    "adagrad": (torch.optim.Adagrad, {"lr_decay": 0.01}),
}
FUSED_OK = {"sgd", "sgd_momentum", "sgd_nesterov", "adam", "adam_amsgrad", "adamw", "adagrad"}


def variants() -> list[Any]:
    out = []
    for name in OPTIMIZERS:
        for impl in ("loop", "foreach", "fused"):
            if impl == "fused" and name not in FUSED_OK:
                continue
            for wd in (0.0, 0.1):
                out.append(pytest.param(name, impl, wd, id=f"{name}-{impl}-wd{wd}"))
    return out


def factory(name: str, impl: str, wd: float) -> OptFactory:
    cls, kwargs = OPTIMIZERS[name]
    kw = dict(kwargs, lr=LR, weight_decay=wd)
    if impl == "fused":
        kw["fused"] = True
    else:
        kw["foreach"] = impl == "foreach"
    return lambda params: cls(params, **kw)


class Model:
    """A Linear head (label-owned) and a trunk parameter (not label-owned) in one param group."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(D, C, dtype=DT)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(C, D, generator=g, dtype=DT))
            self.head.bias.copy_(torch.randn(C, generator=g, dtype=DT))
        self.trunk = nn.Parameter(torch.randn(D, D, generator=g, dtype=DT))

    def params(self) -> list[Tensor]:
        return [self.trunk, self.head.weight, self.head.bias]


class SplitReference:
    """Row c of the head as two parameters in a param group of its own with lr * s[c] and
    weight_decay wd[c]; rows that must not move get no gradient (the optimizer skips them), and
    the step counter is shared (set to the global step before each step)."""

    def __init__(
        self,
        model: Model,
        make: OptFactory,
        lr_scale: Tensor | None,
        weight_decay: Tensor | None,
    ) -> None:
        w, b = model.head.weight.detach(), model.head.bias.detach()
        self.trunk = nn.Parameter(model.trunk.detach().clone())
        self.w = [nn.Parameter(w[c].clone()) for c in range(C)]
        self.b = [nn.Parameter(b[c : c + 1].clone()) for c in range(C)]
        groups: list[dict[str, Any]] = [{"params": [self.trunk]}]
        base = make([nn.Parameter(torch.zeros(1, dtype=DT))]).defaults
        for c in range(C):
            group: dict[str, Any] = {"params": [self.w[c], self.b[c]]}
            if lr_scale is not None:
                group["lr"] = base["lr"] * float(lr_scale[c])
            if weight_decay is not None:
                group["weight_decay"] = float(weight_decay[c])
            groups.append(group)
        self.opt = make(groups)
        self.t = 0
        self._prime()

    def _prime(self) -> None:
        # Create every row's state as it is before its first step (zeros; the shared step counter
        # is set before each step), so that a row first moving late uses the shared counter.
        saved = [(g["lr"], g["weight_decay"]) for g in self.opt.param_groups]
        for g in self.opt.param_groups:
            g["lr"], g["weight_decay"] = 0.0, 0.0
        for p in [self.trunk, *self.w, *self.b]:
            p.grad = torch.zeros_like(p)
        self.opt.step()
        for g, (lr, wd) in zip(self.opt.param_groups, saved, strict=True):
            g["lr"], g["weight_decay"] = lr, wd

    def step(self, gw: Tensor, gb: Tensor, gt: Tensor, moving: list[bool]) -> None:
        self.trunk.grad = gt.clone()
        for c in range(C):
            self.w[c].grad = gw[c].clone() if moving[c] else None
            self.b[c].grad = gb[c : c + 1].clone() if moving[c] else None
        for p in [self.trunk, *self.w, *self.b]:
            st = self.opt.state.get(p, {})
            if isinstance(st.get("step"), Tensor):
                st["step"].fill_(self.t)
        self.opt.step()
        self.t += 1


def grads(step: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return (
        torch.randn(C, D, generator=g, dtype=DT),
        torch.randn(C, generator=g, dtype=DT),
        torch.randn(D, D, generator=g, dtype=DT),
    )


def set_grads(model: Model, step: int) -> None:
    gw, gb, gt = grads(step)
    model.head.weight.grad = gw.clone()
    model.head.bias.grad = gb.clone()
    model.trunk.grad = gt.clone()


def assert_rows_match(model: Model, ref: SplitReference, opt: lg.RowRules, rows: list[int]) -> None:
    for c in rows:
        for ours, theirs in ((model.head.weight, ref.w[c]), (model.head.bias, ref.b[c])):
            torch.testing.assert_close(ours.detach()[c].reshape(theirs.shape), theirs.detach())
            for key, value in ref.opt.state[theirs].items():
                if isinstance(value, Tensor) and value.shape == theirs.shape:
                    mine = opt.state[ours][key][c].reshape(theirs.shape)
                    torch.testing.assert_close(mine, value, msg=f"state {key} of row {c}")
    torch.testing.assert_close(model.trunk.detach(), ref.trunk.detach())


def snapshot(model: Model, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    out = {"w": model.head.weight.detach().clone(), "b": model.head.bias.detach().clone()}
    for name, p in (("w", model.head.weight), ("b", model.head.bias)):
        for key, value in opt.state.get(p, {}).items():
            if isinstance(value, Tensor) and value.shape == p.shape:
                out[f"{name}.{key}"] = value.clone()
    return out


def assert_rows_unchanged(before: dict[str, Tensor], after: dict[str, Tensor], rows: list[int]):
    for key, old in before.items():
        for c in rows:
            assert torch.equal(after[key][c], old[c]), f"{key} of resting row {c} changed"


# classes observed per step: step 0 sees every class so that every row has state.
TARGETS = [
    torch.arange(C),
    torch.tensor([0, 2, 2]),
    torch.tensor([3, 4]),
    torch.tensor([0]),
    torch.tensor([1, 2, 4, 4]),
    torch.tensor([2, 3]),
]
LR_SCALE = torch.tensor([1.0, 0.5, 2.0, 0.0, 0.25], dtype=DT)
ROW_WD = torch.tensor([0.0, 0.3, 0.05, 0.1, 0.2], dtype=DT)


def with_paths() -> list[Any]:
    """Every variant; Adam/AdamW/SGD twice: their fast path and the generic snapshot path."""
    out = []
    for v in variants():
        name, impl, wd = v.values
        out.append(pytest.param(name, impl, wd, True, id=f"{v.id}"))
        if OPTIMIZERS[name][0] in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
            out.append(pytest.param(name, impl, wd, False, id=f"{v.id}-snapshot"))
    return out


@pytest.mark.parametrize(("name", "impl", "wd", "fast"), with_paths())
def test_matches_split_reference_with_all_rules(name: str, impl: str, wd: float, fast: bool):
    make = factory(name, impl, wd)
    model = Model()
    ref = SplitReference(model, make, LR_SCALE, ROW_WD)
    opt = lg.RowRules(
        make(model.params()),
        rows=model.head,
        frozen=[1],
        lr_scale=LR_SCALE,
        weight_decay=ROW_WD,
        skip_absent=True,
        fast=fast,
    )
    sched_ours = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.8**t)
    sched_ref = torch.optim.lr_scheduler.LambdaLR(ref.opt, lambda t: 0.8**t)
    for t, targets in enumerate(TARGETS):
        if t == 2:
            opt.freeze([4])  # row 4 has moved at steps 0-1
        if t == 3:
            opt.unfreeze([1])  # frozen from the start: starts from fresh state
        if t == 4:
            opt.unfreeze([4])  # resumes from its state of step 1, no stale momentum burst
        frozen = opt.frozen
        present = torch.zeros(C, dtype=torch.bool)
        present[targets] = True
        moving = (present & ~frozen).tolist()
        before = snapshot(model, opt)
        set_grads(model, t)
        opt.step(targets=targets)
        ref.step(*grads(t), moving)
        sched_ours.step()
        sched_ref.step()
        resting = [c for c in range(C) if not moving[c]]
        assert_rows_unchanged(before, snapshot(model, opt), resting)
        assert_rows_match(model, ref, opt, [c for c in range(C) if moving[c]])
    # every row that has moved at some point still matches (frozen rows never did)
    assert_rows_match(model, ref, opt, [0, 2, 3, 4])


@pytest.mark.parametrize(("name", "impl", "wd"), variants())
def test_lr_scale_and_weight_decay_without_skip_match_reference(name: str, impl: str, wd: float):
    make = factory(name, impl, wd)
    model = Model(seed=1)
    ref = SplitReference(model, make, LR_SCALE, ROW_WD if wd else None)
    opt = lg.RowRules(
        make(model.params()),
        rows=[(model.head.weight, 0), (model.head.bias, 0)],
        lr_scale=LR_SCALE,
        weight_decay=ROW_WD if wd else None,
    )
    for t in range(4):
        set_grads(model, t)
        opt.step()
        ref.step(*grads(t), [True] * C)
    assert_rows_match(model, ref, opt, list(range(C)))


@pytest.mark.parametrize(("name", "impl", "wd"), variants())
def test_frozen_rows_and_state_are_bitwise_unchanged(name: str, impl: str, wd: float):
    make = factory(name, impl, wd)
    model = Model(seed=2)
    opt = lg.RowRules(make(model.params()), rows=model.head, frozen=[0, 3])
    plain_model = Model(seed=2)
    plain = make(plain_model.params())
    set_grads(model, 0)
    before = snapshot(model, opt)
    for t in range(5):
        set_grads(model, t)
        set_grads(plain_model, t)
        opt.step()
        plain.step()
    assert_rows_unchanged(before, snapshot(model, opt), [0, 3])
    # the other rows and the trunk are stepped exactly as by the bare optimizer
    for c in (1, 2, 4):
        torch.testing.assert_close(model.head.weight[c], plain_model.head.weight[c])
    torch.testing.assert_close(model.trunk, plain_model.trunk)


@pytest.mark.parametrize("name", ["sgd_momentum", "adamw", "rmsprop"])
def test_no_rules_is_the_bare_optimizer_bitwise(name: str):
    make = factory(name, "foreach", 0.1)
    model, plain_model = Model(seed=3), Model(seed=3)
    opt = lg.RowRules(make(model.params()), rows=model.head, fast=False)
    plain = make(plain_model.params())
    for t in range(3):
        set_grads(model, t)
        set_grads(plain_model, t)
        opt.step()
        plain.step()
    assert torch.equal(model.head.weight, plain_model.head.weight)
    assert torch.equal(model.trunk, plain_model.trunk)


def test_gradient_masking_drifts_but_row_rules_do_not():
    model = Model(seed=4)
    opt = lg.RowRules(
        torch.optim.AdamW(model.params(), lr=0.1, weight_decay=0.1), rows=model.head, frozen=[0]
    )
    masked = Model(seed=4)
    plain = torch.optim.AdamW(masked.params(), lr=0.1, weight_decay=0.1)
    w0 = model.head.weight.detach()[0].clone()
    for t in range(3):
        set_grads(model, t)
        set_grads(masked, t)
        assert masked.head.weight.grad is not None
        masked.head.weight.grad[0] = 0  # the usual "freeze": zero the gradient
        opt.step()
        plain.step()
    assert torch.equal(model.head.weight[0], w0)
    assert not torch.equal(masked.head.weight[0], w0)


def test_gradient_accumulation_unions_observed_classes():
    model = Model(seed=5)
    opt = lg.RowRules(torch.optim.SGD(model.params(), lr=0.1), rows=model.head, skip_absent=True)
    set_grads(model, 0)
    opt.observe(torch.tensor([0]))
    opt.observe(torch.tensor([[0, 0, 0, 1, 0]]), encoding="multi_hot")  # multi-hot micro-batch
    assert opt.present.tolist() == [True, False, False, True, False]
    before = model.head.weight.detach().clone()
    opt.step()
    moved = (model.head.weight != before).any(dim=1).tolist()
    assert moved == [True, False, False, True, False]
    assert not opt.present.any()


@pytest.mark.parametrize(
    ("targets", "encoding", "expected"),
    [
        (torch.tensor([1, -100, 1]), None, [False, True, False, False, False]),
        (torch.tensor([[1, -1, 0, 0, 0]]).float(), None, [True, False, False, False, False]),
        (torch.tensor([[1, -1, 0, 0, 1]]), "multi_hot", [True, False, False, False, True]),
        (
            torch.tensor([[False, True, False, False, True]]),
            None,
            [False, True, False, False, True],
        ),
        (torch.tensor([[0.2, 0.9, 0.0, 0.6, 0.1]]), None, [False, True, False, True, False]),
        (torch.tensor([[[4, 2], [2, 2]]]), "index", [False, False, True, False, True]),  # (N, H, W)
        (torch.zeros(0, dtype=torch.long), None, [False] * 5),
    ],
)
def test_observe_accepts_every_encoding(targets: Tensor, encoding: Any, expected: list[bool]):
    model = Model()
    opt = lg.RowRules(torch.optim.SGD(model.params(), lr=0.1), rows=model.head)
    opt.observe(targets, encoding=encoding)
    assert opt.present.tolist() == expected


def test_class_axis_other_than_zero_matches_the_transposed_head():
    model, other = Model(seed=6), Model(seed=6)
    wt = nn.Parameter(other.head.weight.detach().t().contiguous())  # (D, C), class_dim=1
    opt = lg.RowRules(
        torch.optim.Adam(model.params(), lr=0.1),
        rows=model.head.weight,
        frozen=[2],
        lr_scale=LR_SCALE,
    )
    opt_t = lg.RowRules(
        torch.optim.Adam([wt], lr=0.1), rows=[(wt, 1)], frozen=[2], lr_scale=LR_SCALE, fast=False
    )
    for t in range(3):
        set_grads(model, t)
        wt.grad = grads(t)[0].t().contiguous()
        opt.step()
        opt_t.step()
    torch.testing.assert_close(model.head.weight, wt.t())


def test_state_dict_round_trip_mid_training_continues_identically():
    def build() -> tuple[Model, lg.RowRules]:
        model = Model(seed=7)
        opt = lg.RowRules(
            torch.optim.AdamW(model.params(), lr=0.05, weight_decay=0.1),
            rows=model.head,
            frozen=[0],
            lr_scale=LR_SCALE,
            skip_absent=True,
        )
        return model, opt

    model, opt = build()
    for t in range(3):
        set_grads(model, t)
        opt.step(targets=TARGETS[t])
    opt.unfreeze([0])
    opt.freeze([2])
    opt.observe(torch.tensor([1]))  # mid accumulation window
    saved = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in model.params()]

    resumed_model, resumed = build()
    with torch.no_grad():
        for p, v in zip(resumed_model.params(), saved_params, strict=True):
            p.copy_(v)
    resumed.load_state_dict(saved)
    assert resumed.frozen.tolist() == opt.frozen.tolist()
    assert resumed.present.tolist() == opt.present.tolist()
    for t in range(3, 6):
        for m, o in ((model, opt), (resumed_model, resumed)):
            set_grads(m, t)
            o.step(targets=TARGETS[t])
    for a, b in zip(model.params(), resumed_model.params(), strict=True):
        assert torch.equal(a, b)
    # a plain optimizer state dict loads as well (rules unchanged)
    plain = torch.optim.AdamW(Model().params(), lr=0.05)
    plain.load_state_dict({k: v for k, v in saved.items() if k != "row_rules"})


def test_closure_and_add_param_group():
    model = Model(seed=8)
    extra = nn.Parameter(torch.ones(2, dtype=DT))
    opt = lg.RowRules(torch.optim.Adam(model.params(), lr=0.1), rows=model.head, frozen=[0])
    opt.add_param_group({"params": [extra], "lr": 0.5})
    assert opt.param_groups is opt.optimizer.param_groups
    assert len(opt.param_groups) == 2
    w0 = model.head.weight.detach()[0].clone()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = model.head(torch.ones(4, D, dtype=DT)).square().sum() + extra.sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, Tensor)
    assert torch.equal(model.head.weight[0], w0)
    assert not torch.equal(extra, torch.ones(2, dtype=DT))


def test_grad_scaler_steps_and_skips():
    model = Model(seed=9)
    opt = lg.RowRules(
        torch.optim.AdamW(model.params(), lr=0.1, weight_decay=0.1),
        rows=model.head,
        frozen=[1],
        skip_absent=True,
    )
    ref_model = Model(seed=9)
    ref = lg.RowRules(
        torch.optim.AdamW(ref_model.params(), lr=0.1, weight_decay=0.1),
        rows=ref_model.head,
        frozen=[1],
        skip_absent=True,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(6, D, dtype=DT)
    y = torch.tensor([0, 2, 2, 1, 0, 0])
    for m, o, scale in ((model, opt, scaler), (ref_model, ref, None)):
        o.zero_grad()
        loss = nn.functional.cross_entropy(m.head(x @ m.trunk), y)
        if scale is None:
            loss.backward()
            o.step(targets=y)
        else:
            scale.scale(loss).backward()
            o.observe(y)
            scale.step(o)
            scale.update()
    torch.testing.assert_close(model.head.weight, ref_model.head.weight)
    torch.testing.assert_close(model.trunk, ref_model.trunk)
    # an inf gradient: GradScaler skips the step, nothing moves, the window is discarded
    before = model.head.weight.detach().clone()
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model.head(x @ model.trunk), y)).backward()
    assert model.trunk.grad is not None
    model.trunk.grad[0, 0] = float("inf")
    opt.observe(y)
    scaler.step(opt)
    scaler.update()
    assert torch.equal(model.head.weight, before)
    opt.zero_grad()
    assert not opt.present.any()


def test_lr_scheduler_types_accept_row_rules():
    model = Model()
    opt = lg.RowRules(torch.optim.SGD(model.params(), lr=0.1, momentum=0.9), rows=model.head)
    for sched in (
        torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10),
    ):
        set_grads(model, 0)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] != 0.1


def test_skip_absent_without_targets_raises():
    model = Model()
    opt = lg.RowRules(torch.optim.SGD(model.params(), lr=0.1), rows=model.head, skip_absent=True)
    set_grads(model, 0)
    with pytest.raises(RuntimeError, match="observe"):
        opt.step()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"frozen": [7]}, ValueError, "frozen"),
        ({"frozen": [-1]}, ValueError, "frozen"),
        ({"lr_scale": [1.0, -1.0, 1.0, 1.0, 1.0]}, ValueError, "lr_scale"),
        ({"lr_scale": [1.0, 2.0]}, ValueError, "lr_scale"),
        ({"lr_scale": float("nan")}, ValueError, "lr_scale"),
        ({"weight_decay": [0.0, float("inf"), 0.0, 0.0, 0.0]}, ValueError, "weight_decay"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"num_classes": 4}, ValueError, "num_classes"),
        ({"skip_absent": 1}, TypeError, "skip_absent"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, Any], error: type, match: str):
    model = Model()
    with pytest.raises(error, match=match):
        lg.RowRules(torch.optim.SGD(model.params(), lr=0.1), rows=model.head, **kwargs)


def test_bad_rows_are_rejected():
    model = Model()
    opt = torch.optim.SGD([model.trunk], lr=0.1)
    with pytest.raises(ValueError, match="not in the optimizer"):
        lg.RowRules(opt, rows=model.head)
    full = torch.optim.SGD(model.params(), lr=0.1)
    with pytest.raises(ValueError, match="disagree"):
        lg.RowRules(full, rows=[(model.head.weight, 0), (model.trunk, 0)])
    with pytest.raises(TypeError, match="rows"):
        lg.RowRules(full, rows=nn.ReLU())
    with pytest.raises(TypeError, match="optimizer"):
        lg.RowRules(object(), rows=model.head)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="weight_decay"):
        lg.RowRules(torch.optim.Rprop(model.params()), rows=model.head, weight_decay=[0.1] * C)
    opt2 = lg.RowRules(torch.optim.SGD(model.params(), lr=0.1), rows=model.head)
    with pytest.raises(ValueError, match="out of range"):
        opt2.observe(torch.tensor([5]))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "snapshot"])
def test_non_finite_gradient_in_a_resting_row_leaves_it_and_its_state_bitwise(fast: bool):
    model = Model(seed=10)
    opt = lg.RowRules(
        torch.optim.AdamW(model.params(), lr=0.1, weight_decay=0.1),
        rows=model.head,
        frozen=[0],
        skip_absent=True,
        fast=fast,
    )
    set_grads(model, 0)
    opt.step(targets=torch.arange(C))
    before = snapshot(model, opt)
    set_grads(model, 1)
    assert model.head.weight.grad is not None
    model.head.weight.grad[0] = float("nan")  # frozen
    model.head.weight.grad[3] = float("inf")  # absent
    opt.step(targets=torch.tensor([1, 2, 4]))
    assert_rows_unchanged(before, snapshot(model, opt), [0, 3])
    assert torch.isfinite(model.head.weight[[1, 2, 4]]).all()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "snapshot"])
def test_adam_with_eps_zero_keeps_never_stepped_rows_finite(fast: bool):
    model = Model(seed=11)
    opt = lg.RowRules(
        torch.optim.Adam(model.params(), lr=0.1, eps=0.0), rows=model.head, frozen=[2], fast=fast
    )
    w2 = model.head.weight.detach()[2].clone()
    for t in range(2):
        set_grads(model, t)
        opt.step()
    assert torch.equal(model.head.weight[2], w2)
    assert torch.isfinite(model.head.weight).all()


def test_step_hooks_and_pickling():
    model = Model(seed=12)
    opt = lg.RowRules(torch.optim.SGD(model.params(), lr=0.1), rows=model.head, frozen=[1])
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    set_grads(model, 0)
    opt.step()
    assert calls == ["pre", "post"]
    clone = copy.deepcopy(opt)
    assert clone.frozen.tolist() == opt.frozen.tolist()


class HostSync(AssertionError):
    pass


@pytest.fixture
def forbid_host_sync(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make every value read-back a tensor offers (item, tolist, bool, int, float, nonzero)
    raise; on an accelerator each of them would synchronise with the host."""

    def arm() -> None:
        # The fast kernels gather the moving rows of a CPU tensor (the count of a CPU mask is a
        # CPU read, not a sync); on an accelerator they never do: step as there.
        monkeypatch.setattr(families_family, "GATHER_SHARE", 0)

        def refuse(*args: object, **kwargs: object) -> None:
            raise HostSync("host read on the step path")

        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
            monkeypatch.setattr(Tensor, name, refuse)
        monkeypatch.setattr(torch, "nonzero", refuse)

    return arm


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "snapshot"])
def test_adamw_step_path_reads_nothing_back(fast: bool, forbid_host_sync: Callable[[], None]):
    model = Model(seed=13)
    # Only the head, and fused: torch's own for-loop/foreach AdamW, and labelgrad's fast path
    # like it, read a CPU step counter back (a CPU read, not a sync), which the patch cannot
    # tell apart; with fused the counter lives with the parameters and nothing is read.
    opt = lg.RowRules(
        torch.optim.AdamW(model.head.parameters(), lr=0.1, weight_decay=0.1, fused=True),
        rows=model.head,
        frozen=[0],
        lr_scale=LR_SCALE,
        weight_decay=ROW_WD,
        skip_absent=True,
        fast=fast,
    )
    set_grads(model, 0)
    opt.observe(torch.tensor([1, 3]))  # label validation reads CPU values: outside the step
    forbid_host_sync()
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("fast", [True, False], ids=["sgd_fast", "snapshot"])
def test_sgd_step_paths_read_nothing_back(
    fast: bool, forbid_host_sync: Callable[[], None], monkeypatch: pytest.MonkeyPatch
):
    model = Model(seed=14)
    opt = lg.RowRules(
        torch.optim.SGD(model.params(), lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
        rows=model.head,
        frozen=[0],
        lr_scale=LR_SCALE,
        weight_decay=ROW_WD,
        skip_absent=True,
        fast=fast,
    )
    set_grads(model, 0)
    opt.observe(torch.tensor([1, 3]))
    forbid_host_sync()
    opt.step()  # creates the buffer (rows 1, 3 start)
    opt.zero_grad()
    monkeypatch.undo()  # label validation reads CPU values: outside the step
    set_grads(model, 1)
    opt.observe(torch.tensor([2, 4]))  # rows 2, 4 start late: the first-move path
    forbid_host_sync()
    opt.step()
