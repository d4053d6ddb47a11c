"""Fuzz: every label tensor given to RowRules.observe / route.observe is read as documented, or
refused with a ValueError / TypeError; none is read as another encoding (issue 15).

The documented reading, implemented here independently with Python loops:
- the encoding is ``encoding=`` when given (``"index"`` needs an integer dtype), else bool ->
  multi-hot, float -> soft, integer -> from ``like=`` (one dimension fewer than the logits:
  class indices; as many: multi-hot), 1-D integer -> class indices; an integer tensor of two or
  more dimensions without ``encoding``/``like`` is an error (never guessed from its shape);
- class indices (N, *): every entry in [0, C) or equal to ignore_index, else an error;
  present = the indices that occur;
- multi-hot (N, C, *): values in {-1, 0, 1}; soft (N, C, *): values in [0, 1] or -1;
  present[c] = some entry of class c is 1 (multi-hot) / >= 0.5 (soft).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import labelgrad as lg

IGNORE = -100
DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int32,
    torch.int64,
    torch.float32,
    torch.float64,
]
VALUES = [0, 1, -1, 2, 0.5, 0.49, 0.7, IGNORE, 255, float("nan"), float("inf"), 3]


class Refused(Exception):
    pass


def documented(t: Tensor, c: int, encoding: Any, like: Tensor | None) -> list[bool]:
    """The reading the docs promise, or Refused."""
    is_float, is_bool = t.is_floating_point(), t.dtype == torch.bool
    if encoding is not None:
        if encoding not in ("index", "multi_hot", "soft"):
            raise Refused
        if encoding == "index" and (is_float or is_bool):
            raise Refused
        enc = encoding
    elif is_bool:
        enc = "multi_hot"
    elif is_float:
        enc = "soft"
    elif like is not None:
        if t.dim() == like.dim() - 1:
            enc = "index"
        elif t.dim() == like.dim():
            enc = "multi_hot"
        else:
            raise Refused
    elif t.dim() == 1:
        enc = "index"
    else:
        raise Refused
    values = t.double().flatten().tolist() if t.numel() else []
    if enc == "index":
        if t.dim() < 1:
            raise Refused
        if like is not None and (
            like.shape[1] != c or tuple(t.shape) != tuple(like.shape[:1]) + tuple(like.shape[2:])
        ):
            raise Refused
        if any(not (0 <= v < c or v == IGNORE) for v in values):
            raise Refused
        return [float(k) in values for k in range(c)]
    if t.dim() < 2 or t.shape[1] != c or (like is not None and like.shape != t.shape):
        raise Refused
    ok = (
        (lambda v: v in (-1.0, 0.0, 1.0))
        if enc == "multi_hot"
        else (lambda v: v == -1.0 or 0.0 <= v <= 1.0)
    )
    if any(math.isnan(v) or not ok(v) for v in values):
        raise Refused
    per_class = t.double().movedim(1, -1).reshape(-1, c)
    threshold = 1.0 if enc == "multi_hot" else 0.5
    return [any(row[k] >= threshold for row in per_class.tolist()) for k in range(c)]


@st.composite
def coherent(draw: st.DrawFn) -> tuple[Tensor, int, Any, Tensor | None]:
    """A well-formed label tensor, encoding named or not, logits given or not."""
    c = draw(st.integers(1, 5))
    enc = draw(st.sampled_from(["index", "multi_hot", "soft"]))
    n = draw(st.integers(0, 4))
    extra = draw(st.sampled_from([(), (), (2,), (2, 3)]))
    logits = torch.zeros(n, c, *extra)
    if enc == "index":
        dtype = draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))
        pool: list[float] = [*range(c)] + ([IGNORE] if dtype != torch.uint8 else [])
        shape: tuple[int, ...] = (n, *extra)
    elif enc == "multi_hot":
        dtype = draw(st.sampled_from([torch.bool, torch.int64, torch.int8, torch.float32]))
        pool = [0, 1] if dtype == torch.bool else [0, 1, 1, -1]
        shape = tuple(logits.shape)
    else:
        dtype = draw(st.sampled_from([torch.float32, torch.float64]))
        pool = [0.0, 0.2, 0.5, 0.7, 1.0, -1.0]
        shape = tuple(logits.shape)
    raw = draw(
        st.lists(st.sampled_from(pool), min_size=math.prod(shape), max_size=math.prod(shape))
    )
    t = torch.tensor(raw, dtype=torch.float64).to(dtype).reshape(shape)
    encoding = draw(st.sampled_from([None, enc]))
    like = draw(st.sampled_from([None, logits]))
    return t, c, encoding, like


@st.composite
def hostile(draw: st.DrawFn) -> tuple[Tensor, int, Any, Tensor | None]:
    """Any dtype, shape, values, encoding and logits: mostly malformed."""
    c = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.sampled_from([0, 1, 1, 2, 2, 2, 3]))
    # shapes that often hit C on the class axis, and often do not
    shape = [draw(st.sampled_from([0, 1, 2, c, c, c + 1])) for _ in range(ndim)]
    n = math.prod(shape)
    raw = draw(st.lists(st.sampled_from(VALUES), min_size=n, max_size=n))
    if dtype == torch.bool:
        t = torch.tensor([bool(v) and not math.isnan(v) for v in raw], dtype=dtype)
    elif dtype.is_floating_point:
        t = torch.tensor(raw, dtype=dtype)
    else:
        info = torch.iinfo(dtype)
        ints = [int(v) for v in raw if not (math.isnan(v) or math.isinf(v))]
        ints += [0] * (n - len(ints))
        t = torch.tensor([min(max(v, info.min), info.max) for v in ints], dtype=dtype)
    t = t.reshape(shape)
    encoding = draw(st.sampled_from([None, None, "index", "multi_hot", "soft", "onehot"]))
    like = None
    if draw(st.booleans()):
        first = shape[0] if shape else 2
        like_shape = draw(
            st.sampled_from(
                [(first, c), (first, c, *shape[1:]), (first, c, *shape[2:]), (2, c + 1)]
            )
        )
        like = torch.zeros(like_shape)
    return t, c, encoding, like


def labels() -> st.SearchStrategy[tuple[Tensor, int, Any, Tensor | None]]:
    return st.one_of(coherent(), hostile())


def read(observe: Any, present: Any, t: Tensor, encoding: Any, like: Tensor | None) -> list[bool]:
    try:
        observe(t, encoding=encoding, like=like)
    except (ValueError, TypeError):
        raise Refused from None
    return present()


def check(t: Tensor, c: int, encoding: Any, like: Tensor | None, observe: Any, present: Any):
    try:
        expected = documented(t, c, encoding, like)
    except Refused:
        expected = None
    try:
        got = read(observe, present, t, encoding, like)
    except Refused:
        got = None
    assert got == expected, (t.dtype, tuple(t.shape), t.tolist(), c, encoding, like)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(labels())
def test_row_rules_observe_reads_labels_as_documented(case: tuple[Any, ...]):
    t, c, encoding, like = case
    h = nn.Linear(2, c)
    opt = lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h, skip_absent=True)
    check(t, c, encoding, like, opt.observe, lambda: opt.present.tolist())


@FUZZ
@given(labels())
def test_route_observe_reads_labels_as_documented(case: tuple[Any, ...]):
    t, c, encoding, like = case
    heads = [nn.Linear(2, 1) for _ in range(c)]
    router = lg.route(
        {f"g{k}": (torch.optim.SGD(h.parameters(), lr=0.1), [k]) for k, h in enumerate(heads)}
    )

    def present() -> list[bool]:
        # which optimizers step: a head moves iff its class is present
        for h in heads:
            h.weight.grad = torch.ones_like(h.weight)
        before = [h.weight.detach().clone() for h in heads]
        router.step()
        return [not torch.equal(h.weight, b) for h, b in zip(heads, before, strict=True)]

    check(t, c, encoding, like, router.observe, present)


@pytest.mark.parametrize(
    ("targets", "encoding", "expected"),
    [
        (torch.tensor([[0, 1, 1]]), "multi_hot", None),  # 3 columns for 4 classes: refused
        (torch.tensor([[0, 1, 1]]), "index", [True, True, False, False]),
        (torch.tensor([[0, 1, 1]]), None, None),  # before: read as indices 0, 1, 1
        (torch.tensor([[0, 1, 1, 0]]), None, None),  # before: "ambiguous" without a way out
        (torch.tensor([[0, 1, 1, 0]]), "multi_hot", [False, True, True, False]),
    ],
)
def test_known_cases(targets: Tensor, encoding: Any, expected: list[bool] | None):
    h = nn.Linear(2, 4)
    opt = lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h)
    for t, c, e, like in itertools.product([targets], [4], [encoding], [None]):
        check(t, c, e, like, opt.observe, lambda: opt.present.tolist())
        if expected is not None:
            assert opt.present.tolist() == expected


def test_uint8_255_is_not_read_as_unknown():
    """Found by the fuzz: uint8 255 == -1 compares True, so 255 passed as "unknown" and was
    then read as a positive label."""
    h = nn.Linear(2, 2)
    opt = lg.RowRules(torch.optim.SGD(h.parameters(), lr=0.1), rows=h)
    with pytest.raises(ValueError, match="multi_hot targets must contain only"):
        opt.observe(torch.tensor([[0, 255]], dtype=torch.uint8), encoding="multi_hot")
    with pytest.raises(ValueError, match="multi_hot targets must contain only"):
        lg.Targets.coerce(torch.tensor([[0, 255]], dtype=torch.uint8), encoding="multi_hot")
