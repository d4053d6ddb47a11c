"""The cheaper label checks, masks and clipping norm of issue 24 (chainops), against references.

Each fast path is compared with the plain definition it replaces, on the hostile values
HOSTILE.md lists: NaN, +-inf, -0.0, subnormals, values just outside the valid set, huge
integers, every encoding, float64 labels and non-contiguous layouts.
"""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from labelgrad.app.bench import policies as bench
from labelgrad.app.bench.timing import format_table

F64 = torch.float64
TINY = 1e-45  # the smallest float32 subnormal

FLOAT_VALUES = [
    -1.0, 0.0, -0.0, 1.0, 0.5, 0.25, TINY, 1.0 - 2**-24,  # valid soft labels
    -0.5, -TINY, -1.0 + 2**-23, -1.0 - 2**-23, -2.0, 1.0 + 2**-23, 2.0,
    float("nan"), float("inf"), float("-inf"),
]  # fmt: skip


def soft_is_valid(v: float) -> bool:
    return v == -1.0 or 0.0 <= v <= 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", FLOAT_VALUES)
@pytest.mark.parametrize("encoding", ["soft", "multi_hot"])
def test_float_label_check_accepts_exactly_the_valid_values(value, encoding, dtype):
    y = torch.tensor([[0.0, value]], dtype=dtype)
    valid = soft_is_valid(value) and (encoding == "soft" or value in (-1.0, 0.0, 1.0))
    if valid:
        t = lg.Targets.coerce(y, num_classes=2, encoding=encoding)
        assert t.known.tolist() == [[True, value >= 0]]
        assert t.positive.tolist() == [[False, value >= 0.5]]
    else:
        with pytest.raises(ValueError, match=encoding):
            lg.Targets.coerce(y, num_classes=2, encoding=encoding)


INT_CASES = [
    (dtype, value)
    for dtype in (torch.int64, torch.int32, torch.int16, torch.int8)
    for value in (-1, 0, 1, 2, -2, 2**40, -(2**40), 2**62, -(2**63), 2**63 - 1)
    if torch.iinfo(dtype).min <= value <= torch.iinfo(dtype).max  # representable only
]


@pytest.mark.parametrize(("dtype", "value"), INT_CASES)
def test_integer_multi_hot_check_accepts_exactly_minus_one_zero_and_one(dtype, value):
    y = torch.tensor([[0, value]], dtype=dtype)
    if value in (-1, 0, 1):
        t = lg.Targets.coerce(y, num_classes=2, encoding="multi_hot")
        assert t.known.tolist() == [[True, value >= 0]]
        assert t.positive.tolist() == [[False, value > 0]]
        assert t.float_labels is None  # the float copy the checks read stays private
    else:
        with pytest.raises(ValueError, match="multi_hot"):
            lg.Targets.coerce(y, num_classes=2, encoding="multi_hot")


def test_unsigned_labels_are_checked_as_their_values():
    with pytest.raises(ValueError, match="multi_hot"):
        lg.Targets.coerce(torch.tensor([[0, 255]], dtype=torch.uint8), num_classes=2,
                          encoding="multi_hot")  # fmt: skip
    t = lg.Targets.coerce(torch.tensor([[0, 1]], dtype=torch.uint8), num_classes=2,
                          encoding="multi_hot")  # fmt: skip
    assert t.positive.tolist() == [[False, True]]


def _encodings() -> dict[str, tuple[torch.Tensor, dict[str, object]]]:
    g = torch.Generator().manual_seed(0)
    hard = torch.randint(-1, 2, (6, 4, 3), generator=g)  # (N, C, T)
    soft = torch.rand(6, 4, 3, generator=g, dtype=F64)
    soft[hard == -1] = -1.0
    idx = torch.randint(0, 4, (6, 3), generator=g)
    idx[0, 1] = -100
    return {
        "int multi-hot": (hard, {"encoding": "multi_hot"}),
        "float multi-hot": (hard.float(), {"encoding": "multi_hot"}),
        "soft float64": (soft, {}),
        "soft non-contiguous": (soft.transpose(0, 2).contiguous().transpose(0, 2), {}),
        "bool": (hard > 0, {}),
        "index": (idx, {"encoding": "index"}),
    }


@pytest.mark.parametrize("name", list(_encodings()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["as given", "class_last", "to"])
def test_cached_masks_equal_the_bool_masks_cast(name, dtype, layout):
    y, kw = _encodings()[name]
    t = lg.Targets.coerce(y, num_classes=4, **kw)  # type: ignore[arg-type]
    if layout == "class_last":
        t = t.class_last()
    elif layout == "to":
        t = t.to("cpu")
    for mask in ("known", "positive"):
        got = t.mask_as(mask, dtype)  # type: ignore[arg-type]
        want = getattr(t, mask).to(dtype)
        assert got.dtype == dtype and got.shape == want.shape
        assert torch.equal(got, want), (name, mask)
        assert t.mask_as(mask, dtype) is got  # computed once  # type: ignore[arg-type]
    # and the bool masks follow the definitions
    if t.float_labels is not None:
        assert torch.equal(t.known, t.float_labels >= 0)
        assert torch.equal(t.positive, t.float_labels >= 0.5)


def test_masks_of_float_labels_changed_in_place_before_backward_are_refused():
    y = torch.tensor([[1.0, -1.0, 0.0]])
    z = torch.zeros(1, 3, requires_grad=True)
    out = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=3))(z, y)
    y[0, 1] = 1.0  # after the forward pass, before the masks are made in backward
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_integer_labels_changed_in_place_after_the_forward_pass_change_nothing():
    # Integer labels are read once, into a private float copy: as before, the forward pass's
    # labels are the ones that count.
    y = torch.tensor([[1, -1, 0]])
    z = torch.zeros(1, 3, requires_grad=True)
    out = lg.chain(lg.mask_unknown(), lg.pos_neg_weights(pos=2.0, neg=0.5))(z, y)
    y.fill_(1)
    out.sum().backward()
    assert z.grad.tolist() == [[2.0, 0.0, 0.5]]


MAGNITUDES = [0.0, TINY, 1e-40, 1e-30, 1e-20, 1e-3, 1.0, 1e19, 1e20, 1e30, 3e38]


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("which", ["class", "sample"])
def test_clipping_norm_is_the_float64_norm_at_every_float32_magnitude(magnitude, which):
    g = torch.Generator().manual_seed(1)
    up = (torch.rand(7, 5, generator=g, dtype=F64) * 2 - 1) * magnitude
    up = up.float()
    up[:, 2] = 0.0  # a zero column (class) and a zero row (sample) are left as they are
    up[3] = 0.0
    limit = 0.25 * magnitude if magnitude else 1.0
    policy = lg.clip_per_class(limit) if which == "class" else lg.clip_per_sample(limit)
    z = torch.zeros(7, 5, requires_grad=True)
    (got,) = torch.autograd.grad(policy(z), z, up)
    dim = 0 if which == "class" else 1
    u = up.to(F64)
    norm = u.square().sum(dim, keepdim=True).sqrt()
    factor = torch.where(norm > 0, torch.clamp(limit / norm, max=1.0), 1.0)
    want = up * factor.float()  # the factor rounded to float32, then applied
    assert torch.equal(got, want)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_clipping_leaves_a_class_with_a_non_finite_entry_untouched(bad):
    up = torch.tensor([[3.0, bad, 1e20], [4.0, 1.0, 1e20]])
    z = torch.zeros(2, 3, requires_grad=True)
    (got,) = torch.autograd.grad(lg.clip_per_class(1.0)(z), z, up)
    torch.testing.assert_close(got[:, 1], up[:, 1], equal_nan=True)
    torch.testing.assert_close(got[:, 0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(got[:, 2], torch.full((2,), 2**-0.5))


@pytest.mark.parametrize("upstream", [0.0, float("inf"), float("nan")])
def test_eqlv2_skips_batches_with_zero_or_non_finite_gradient(upstream):
    policy = lg.eqlv2(num_classes=3)
    z = torch.zeros(2, 3, requires_grad=True)
    up = torch.ones(2, 3)
    up[0, 0] = upstream
    if upstream == 0.0:
        up.zero_()
    torch.autograd.grad(policy(z, torch.tensor([[1, 0, -1], [0, 1, 1]])), z, up)
    assert policy.num_updates.item() == 0.0
    assert policy.pos_grad.tolist() == [0.0, 0.0, 0.0] == policy.neg_grad.tolist()


def test_eqlv2_counts_a_batch_of_subnormal_gradient():
    policy = lg.eqlv2(num_classes=2)
    z = torch.zeros(1, 2, requires_grad=True)
    torch.autograd.grad(policy(z, torch.tensor([[1, 0]])), z, torch.full((1, 2), TINY))
    assert policy.num_updates.item() == 1.0
    assert policy.pos_grad[0].item() > 0 and policy.neg_grad[1].item() > 0


def test_bench_reports_best_run_and_spread(monkeypatch):
    # Timings replaced by fixed ones: run 1 is slow for the chain, run 2 fast; the rows take
    # the best run and report every run's ratio. Operator counts are real.
    calls = {"n": 0}

    def fake(cases, *, steps, warmup):
        calls["n"] += 1
        slow = calls["n"] <= 6  # 3 configurations x 2 thread counts in the first run
        return {name: (2.0 if slow and name != "plain" else 1.5) if name != "plain" else 1.0
                for name in cases}  # fmt: skip

    monkeypatch.setattr(bench, "interleaved", fake)
    monkeypatch.setattr(bench, "_thread_counts", lambda: [2, 1])
    rows = bench.run(quick=True, runs=2)
    assert calls["n"] == 12
    assert len(rows) == 3 * 2 * 3
    chains = [r for r in rows if "chain" in r.case]
    assert {r.extra["labels"] for r in chains} == {"int64", "float32"}
    assert {r.benchmark.split(" (")[0].split(",")[0] for r in rows} == {
        "policies/mlp 784-64-64", "policies/mlp 256-32-32", "policies/cnn 28x28 4 ch",
    }  # fmt: skip
    for r in chains:
        assert r.ratio == 1.5 and r.extra["ratio_runs"] == [2.0, 1.5]
        assert r.extra["spread"] == (1.5, 2.0)
        assert r.extra["added_ops"] == r.extra["aten_ops"] - next(
            p.extra["aten_ops"] for p in rows if p.benchmark == r.benchmark and p.ratio == 1.0
        )
        assert r.extra["added_ops"] <= 80
    table = format_table(rows)
    assert "1.50x (1.50-2.00)" in table
    with pytest.raises(ValueError, match="runs"):
        bench.run(quick=True, runs=0)
