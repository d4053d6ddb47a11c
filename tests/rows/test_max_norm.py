"""RowRules(max_norm=...): per-class MaxNorm after each step (issue 21, item 1).

The reference is direct: the same RowRules without max_norm (its frozen and absent rules are
tested elsewhere against split parameters), then, after each step, the weight rows that moved
projected in float64: ``w_c * min(1, r_c / ||w_c||)``. Rows inside their ball are never
touched by the reference, so ours must keep their bits.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from _row_helpers import C, D, grads, head, set_grads
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.rows.families import family as families_family

INF = float("inf")
# Row 3's ball is so large that it is never reached: that row must keep its bits.
RADII = [0.3, 0.5, 0.05, 1e3]
TARGETS = [torch.tensor([0, 1, 3]), torch.tensor([1, 2, 3]), torch.tensor([0, 2, 3])]

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.3, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.1),  # snapshot path
}


def project_direct(w: Tensor, radii: list[float], moving: Tensor) -> int:
    """The float64 projection of the moving rows, written out (no labelgrad code); returns the
    number of rows it rescaled."""
    with torch.no_grad():
        w64 = w.detach().double()
        norm = w64.norm(dim=1)
        r = torch.tensor(radii, dtype=torch.float64)
        factor = torch.ones(C, dtype=torch.float64)
        for c in range(C):
            if moving[c] and norm[c] > r[c]:
                factor[c] = r[c] / norm[c]
        w.copy_((w64 * factor[:, None]).to(w.dtype))
    return int((factor < 1).sum())


def moving_rows(frozen: list[int], skip_absent: bool, t: int) -> Tensor:
    mask = torch.ones(C, dtype=torch.bool)
    if skip_absent:
        mask = torch.zeros(C, dtype=torch.bool)
        mask[TARGETS[t]] = True
    mask[frozen] = False
    return mask


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("rules", ["none", "frozen", "absent", "frozen+absent+lr_scale"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_max_norm_is_the_step_then_a_projection(name: str, rules: str, fast: bool):
    frozen = [2] if "frozen" in rules else []
    skip = "absent" in rules
    scale = [1.0, 0.5, 2.0, 1.0] if "lr_scale" in rules else None
    ours, ref_head = head(seed=1), head(seed=1)
    opt = lg.RowRules(
        OPTIMIZERS[name](ours.parameters()),
        rows=ours,
        frozen=frozen,
        lr_scale=scale,
        skip_absent=skip,
        max_norm=torch.tensor(RADII, dtype=torch.float64),
        fast=fast,
    )
    ref = lg.RowRules(
        OPTIMIZERS[name](ref_head.parameters()),
        rows=ref_head,
        frozen=frozen,
        lr_scale=scale,
        skip_absent=skip,
        fast=fast,
    )
    w0 = ours.weight.detach().clone()
    projected = 0
    for t in range(3):
        for h, o in ((ours, opt), (ref_head, ref)):
            set_grads(h, t)
            o.step(targets=TARGETS[t])
        moving = moving_rows(frozen, skip, t)
        projected += project_direct(ref_head.weight, RADII, moving)
        torch.testing.assert_close(ours.weight, ref_head.weight, rtol=1e-12, atol=1e-15)
        # The bias is never projected, and row 3 (inside its ball) never touched: bitwise.
        assert torch.equal(ours.bias, ref_head.bias)
        assert torch.equal(ours.weight[3], ref_head.weight[3])
        for c in range(C):
            if moving[c]:
                assert float(ours.weight[c].detach().norm()) <= RADII[c] * (1 + 1e-12)
    # Frozen rows sit outside their ball (radius 0.05) and were never projected.
    for c in frozen:
        assert torch.equal(ours.weight[c], w0[c])
    assert projected >= 3  # the projection really acted


def test_frozen_and_absent_rows_keep_their_state_and_bits_under_max_norm():
    h = head(seed=2)
    opt = lg.RowRules(
        torch.optim.Adam(h.parameters(), lr=0.5),
        rows=h,
        frozen=[1],
        skip_absent=True,
        max_norm=0.0,  # every row that moves is zeroed
    )
    set_grads(h, 0)
    opt.step(targets=torch.arange(C))
    state0 = {k: v.clone() for k, v in opt.state[h.weight].items()}
    w1 = h.weight.detach().clone()
    set_grads(h, 1)
    opt.step(targets=torch.tensor([0]))  # rows 2, 3 absent, row 1 frozen
    assert torch.equal(h.weight[1:], w1[1:])
    assert torch.equal(h.weight[0], torch.zeros(D, dtype=h.weight.dtype))
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[h.weight][k][1:], state0[k][1:])


def test_no_max_norm_and_infinite_radii_are_the_same_step_bitwise():
    a, b, c = head(seed=3), head(seed=3), head(seed=3)
    opts = [
        lg.RowRules(torch.optim.Adam(a.parameters(), lr=0.5), rows=a),
        lg.RowRules(torch.optim.Adam(b.parameters(), lr=0.5), rows=b, max_norm=INF),
        lg.RowRules(
            torch.optim.Adam(c.parameters(), lr=0.5), rows=c, max_norm=[INF, 1e300, INF, 1e30]
        ),
    ]
    for t in range(3):
        for h, o in zip((a, b, c), opts, strict=True):
            set_grads(h, t)
            o.step()
    for h in (b, c):
        assert torch.equal(h.weight, a.weight) and torch.equal(h.bias, a.bias)


def test_rows_inside_keep_their_bits_whatever_the_rounding():
    """A row whose norm equals its radius, or is just inside, is not rescaled (factor 1)."""
    w = torch.tensor([[3.0, 4.0], [0.1, 0.2], [1e-30, 0.0], [0.0, 0.0]], dtype=torch.float32)
    p = nn.Parameter(w.clone())
    norms = torch.linalg.vector_norm(w.double(), dim=1)
    opt = lg.RowRules(torch.optim.SGD([p], lr=0.1), rows=p, max_norm=norms)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p.detach(), w)


def test_a_tensor_without_gradient_is_not_projected():
    h = head(seed=4)
    opt = lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h, max_norm=0.01)
    w0 = h.weight.detach().clone()
    h.bias.grad = torch.ones(C, dtype=h.bias.dtype)
    opt.step()  # the weight has no gradient: the optimizer did not move it
    assert torch.equal(h.weight, w0)


def test_class_axis_other_than_zero_matches_the_transposed_head():
    h = head(seed=5)
    wt = nn.Parameter(h.weight.detach().t().contiguous())  # (D, C), class_dim=1
    a = lg.RowRules(torch.optim.Adam([h.weight], lr=0.5), rows=h.weight, max_norm=RADII)
    b = lg.RowRules(torch.optim.Adam([wt], lr=0.5), rows=[(wt, 1)], max_norm=RADII)
    for t in range(3):
        h.weight.grad = grads(t)[0]
        wt.grad = grads(t)[0].t().contiguous()
        a.step()
        b.step()
    torch.testing.assert_close(h.weight, wt.t(), rtol=1e-13, atol=0)


def test_every_weight_tensor_is_projected_on_its_own():
    w1 = nn.Parameter(torch.full((C, 2), 3.0, dtype=torch.float64))
    w2 = nn.Parameter(torch.full((C, 5), 4.0, dtype=torch.float64))
    opt = lg.RowRules(torch.optim.SGD([w1, w2], lr=0.0), rows=[w1, w2], max_norm=1.0)
    w1.grad, w2.grad = torch.zeros_like(w1), torch.zeros_like(w2)
    opt.step()
    torch.testing.assert_close(w1.norm(dim=1), torch.ones(C, dtype=torch.float64))
    torch.testing.assert_close(w2.norm(dim=1), torch.ones(C, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_against_the_float64_projection(dtype: torch.dtype):
    ours, ref = head(dtype, seed=6), head(dtype, seed=6)
    opt = lg.RowRules(torch.optim.SGD(ours.parameters(), lr=0.5), rows=ours, max_norm=RADII)
    bare = torch.optim.SGD(ref.parameters(), lr=0.5)
    for t in range(3):
        for h, o in ((ours, opt), (ref, bare)):
            set_grads(h, t)
            o.step()
        project_direct(ref.weight, RADII, torch.ones(C, dtype=torch.bool))
        torch.testing.assert_close(ours.weight, ref.weight)
        assert torch.equal(ours.bias, ref.bias)
        assert torch.equal(ours.weight[3], ref.weight[3])


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [
        (torch.float32, 1e30),
        (torch.float32, 1e-30),
        (torch.float64, 1e200),
        (torch.float64, 1e-200),
    ],
)
@pytest.mark.parametrize("radius_scale", [1.0, 1e-20])
def test_huge_and_tiny_entries_and_radii(dtype: torch.dtype, scale: float, radius_scale: float):
    """Only ratios matter: squares that leave the dtype's range do not zero or keep a row."""
    base = torch.tensor([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0], [0.0, 0.0]], dtype=torch.float64)
    p = nn.Parameter((base * scale).to(dtype))
    r = torch.tensor([1.0, 1.0, 20.0, 1.0], dtype=torch.float64) * scale * radius_scale
    opt = lg.RowRules(torch.optim.SGD([p], lr=0.0), rows=p, max_norm=r)
    p.grad = torch.zeros_like(p)
    w = p.detach().double().clone()
    opt.step()
    want = w.clone()
    for c in range(C):
        n = float(base[c].norm()) * scale  # the norm, without squaring huge or tiny entries
        if n > r[c]:
            want[c] = w[c] * (float(r[c]) / n)
        else:
            assert torch.equal(p[c], w[c].to(dtype)), f"row {c} is inside and must keep its bits"
    torch.testing.assert_close(p.detach(), want.to(dtype), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (-1.0, ValueError, "max_norm must be non-negative"),
        ([1.0, -0.5, 1.0, 1.0], ValueError, "max_norm must be non-negative"),
        (float("nan"), ValueError, "max_norm must be non-negative"),
        ([1.0, float("nan"), 1.0, 1.0], ValueError, "max_norm"),
        ([1.0, 1.0, 1.0], ValueError, r"max_norm must be a number or have shape \(4,\)"),
        (torch.ones(2, 2), ValueError, r"max_norm .*shape \(2, 2\)"),
        (True, TypeError, "max_norm"),
        ("1.0", TypeError, "max_norm"),
        ([1.0, "a", 1.0, 1.0], TypeError, "max_norm"),
        (torch.ones(4, dtype=torch.bool), TypeError, "max_norm"),
    ],
)
def test_bad_radii_are_refused_naming_max_norm(value: Any, error: type, match: str):
    h = head()
    with pytest.raises(error, match=match):
        lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h, max_norm=value)


def test_max_norm_needs_weight_rows():
    h = head()
    with pytest.raises(ValueError, match="max_norm: rows has no weight rows"):
        lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h.bias, max_norm=1.0)


def test_max_norm_property_is_a_float64_copy():
    h = head()
    radii = torch.tensor([1.0, 2.0, INF, 0.0], dtype=torch.float32)
    opt = lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h, max_norm=radii)
    got = opt.max_norm
    assert got is not None and got.dtype == torch.float64
    assert got.tolist() == [1.0, 2.0, INF, 0.0]
    got.fill_(0.0)
    assert opt.max_norm is not None and opt.max_norm.tolist() == [1.0, 2.0, INF, 0.0]
    radii.fill_(5.0)  # the caller's tensor is not aliased either
    assert opt.max_norm.tolist() == [1.0, 2.0, INF, 0.0]
    assert lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h).max_norm is None


def build_resumable(h: nn.Linear, radii: Any) -> lg.RowRules:
    return lg.RowRules(
        torch.optim.AdamW(h.parameters(), lr=0.3, weight_decay=0.1),
        rows=h,
        frozen=[1],
        skip_absent=True,
        max_norm=radii,
    )


def test_state_dict_round_trip_continues_bitwise():
    h, h2 = head(seed=7), head(seed=7)
    opt = build_resumable(h, RADII)
    for t in range(2):
        set_grads(h, t)
        opt.step(targets=TARGETS[t])
    saved = copy.deepcopy(opt.state_dict())
    assert saved["row_rules"]["max_norm"].tolist() == RADII
    with torch.no_grad():
        for a, b in zip(h2.parameters(), h.parameters(), strict=True):
            a.copy_(b)
    resumed = build_resumable(h2, torch.tensor(RADII, dtype=torch.float64))
    resumed.load_state_dict(saved)
    for hh, oo in ((h, opt), (h2, resumed)):
        set_grads(hh, 2)
        oo.step(targets=TARGETS[2])
    assert torch.equal(h.weight, h2.weight) and torch.equal(h.bias, h2.bias)


@pytest.mark.parametrize(
    ("saved", "mine"), [(RADII, 1.0), (RADII, None), (None, RADII), ([INF] * C, None)]
)
def test_loading_other_radii_is_refused_naming_max_norm(saved: Any, mine: Any):
    h = head(seed=8)
    opt = build_resumable(h, saved)
    set_grads(h, 0)
    opt.step(targets=TARGETS[0])
    sd = copy.deepcopy(opt.state_dict())
    other = build_resumable(head(seed=8), mine)
    with pytest.raises(ValueError, match=r"saved with max_norm=.*this RowRules has max_norm="):
        other.load_state_dict(sd)


def test_checkpoint_from_before_max_norm_loads_only_without_it():
    h = head(seed=9)
    opt = build_resumable(h, None)
    set_grads(h, 0)
    opt.step(targets=TARGETS[0])
    sd = copy.deepcopy(opt.state_dict())
    del sd["row_rules"]["max_norm"]  # saved by 0.2
    build_resumable(head(seed=9), None).load_state_dict(copy.deepcopy(sd))
    with pytest.raises(ValueError, match="max_norm"):
        build_resumable(head(seed=9), 1.0).load_state_dict(sd)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (torch.ones(3, dtype=torch.float64), r"\['max_norm'\] must be a float tensor"),
        ([1.0] * C, r"\['max_norm'\] must be a float tensor"),
        (torch.tensor([1.0, -1.0, 1.0, 1.0]), r"\['max_norm'\] must be non-negative"),
        (torch.tensor([1.0, float("nan"), 1.0, 1.0]), r"\['max_norm'\] must be non-negative"),
    ],
)
def test_malformed_saved_radii_are_refused(value: Any, match: str):
    h = head(seed=10)
    opt = build_resumable(h, RADII)
    sd = copy.deepcopy(opt.state_dict())
    sd["row_rules"]["max_norm"] = value
    with pytest.raises(ValueError, match=match):
        build_resumable(head(seed=10), RADII).load_state_dict(sd)


def _amp_run(inf_at: int | None) -> tuple[nn.Linear, nn.Linear]:
    """A float32 head stepped through GradScaler, and the reference stepped by hand."""
    ours, ref = head(torch.float32, seed=11), head(torch.float32, seed=11)
    opt = lg.RowRules(
        torch.optim.Adam(ours.parameters(), lr=0.3), rows=ours, skip_absent=True, max_norm=RADII
    )
    bare = lg.RowRules(torch.optim.Adam(ref.parameters(), lr=0.3), rows=ref, skip_absent=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    for t in range(3):
        gw, gb = grads(t, torch.float32)
        if t == inf_at:
            gw = gw.clone()
            gw[0, 0] = INF
        opt.zero_grad()
        scaler.scale(torch.ones(()))  # as scaler.scale(loss) would
        scale = scaler.get_scale()  # a power of two: unscaling is exact
        ours.weight.grad, ours.bias.grad = gw * scale, gb * scale
        opt.observe(torch.arange(C))
        scaler.step(opt)
        scaler.update()
        if t != inf_at:
            ref.weight.grad, ref.bias.grad = gw, gb
            bare.step(targets=torch.arange(C))
            project_direct(ref.weight, RADII, torch.ones(C, dtype=torch.bool))
    return ours, ref


@pytest.mark.parametrize("inf_at", [None, 0, 1])
def test_grad_scaler_steps_and_projects_or_skips_both(inf_at: int | None):
    ours, ref = _amp_run(inf_at)
    torch.testing.assert_close(ours.weight, ref.weight)
    torch.testing.assert_close(ours.bias, ref.bias)
    assert torch.equal(ours.weight[3], ref.weight[3])


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "snapshot"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_the_projection_reads_nothing_back(
    fast: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
):
    """Every value read-back a tensor offers raises during the step: on an accelerator each
    would synchronise with the host (as in test_row_rules.py's step-path tests). Fused AdamW:
    the for-loop one reads its CPU step counter back, which the patch cannot tell apart."""
    h = head(dtype, seed=12)
    opt = lg.RowRules(
        torch.optim.AdamW(h.parameters(), lr=0.1, weight_decay=0.1, fused=True),
        rows=h,
        frozen=[0],
        skip_absent=True,
        max_norm=RADII,
        fast=fast,
    )
    set_grads(h, 0)
    opt.observe(torch.tensor([1, 2]))  # label validation reads CPU values: outside the step

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("host read on the step path")

    # The fast kernels gather the moving rows of a CPU tensor (the count of a CPU mask is a CPU
    # read, not a sync); on an accelerator they never do: step as there.
    monkeypatch.setattr(families_family, "GATHER_SHARE", 0)
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(Tensor, name, refuse)
    monkeypatch.setattr(torch, "nonzero", refuse)
    opt.step()
    monkeypatch.undo()
    assert float(h.weight[2].detach().double().norm()) <= RADII[2] * (1 + 1e-3)
