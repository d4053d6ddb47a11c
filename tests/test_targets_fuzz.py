"""Fuzz Targets.coerce over label tensors (issue 15): the documented reading, or a clear error.

Every drawn input either gives exactly the reading the docs promise for its dtype, shape and
``encoding=`` (checked against a direct reference), or raises ValueError/TypeError; no input is
read as another encoding.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import labelgrad as lg

DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.float32,
    torch.float64,
]
VALUES = [-100, -2, -1, 0, 1, 2, 3, 0.25, 0.5, 0.75, math.nan, math.inf]


def expected_encoding(y, encoding, num_classes, like):
    """The encoding the docs promise, or None where an error is promised."""
    if encoding is not None:
        bad_index = encoding == "index" and (y.is_floating_point() or y.dtype == torch.bool)
        return None if bad_index else encoding
    if y.dtype == torch.bool:
        return "multi_hot"
    if y.is_floating_point():
        return "soft"
    if like is not None:
        return {like.dim() - 1: "index", like.dim(): "multi_hot"}.get(y.dim())
    if y.dim() <= 1:
        return "index"
    if num_classes is None or y.shape[1] == num_classes:
        return None  # ambiguous: the caller must say
    return "index"


def reference(y, enc, c):
    """(positive, known) as the docs define them, or None where the values are invalid."""
    if enc == "index":
        v = y.long()
        if ((v != -100) & ((v < 0) | (v >= c))).any():
            return None
        pos = v.unsqueeze(1) == torch.arange(c).view(1, c, *([1] * (v.dim() - 1)))
        return pos, (v != -100).unsqueeze(1).expand_as(pos)
    f = y.double()
    if y.dtype == torch.bool:
        return y, torch.ones_like(y)
    if enc == "multi_hot":
        if not ((f == 0) | (f == 1) | (f == -1)).all():
            return None
        return f == 1, f != -1
    if not (((f >= 0) & (f <= 1)) | (f == -1)).all():
        return None
    return f >= 0.5, f >= 0


@st.composite
def label_cases(draw):
    n = draw(st.integers(0, 4))
    c = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from([(n,), (n, c), (n, c, 2), (n, c + 1), ()]))
    values = draw(
        st.lists(st.sampled_from(VALUES), min_size=math.prod(shape), max_size=math.prod(shape))
    )
    if dtype == torch.bool:
        y = torch.tensor([bool(v) and not math.isnan(v) for v in values], dtype=torch.bool)
    elif dtype.is_floating_point:
        y = torch.tensor(values, dtype=torch.float64).to(dtype)
    else:
        info = torch.iinfo(dtype)
        ints = [int(v) if math.isfinite(v) else 0 for v in values]  # 0.25 -> 0
        y = torch.tensor([min(max(v, info.min), info.max) for v in ints]).to(dtype)
    y = y.reshape(shape)
    encoding = draw(st.sampled_from([None, None, "index", "multi_hot", "soft"]))
    num_classes = draw(st.sampled_from([None, c]))
    like = torch.zeros(n, c, *([2] if draw(st.booleans()) else [])) if draw(st.booleans()) else None
    return y, encoding, num_classes, like, c


@settings(max_examples=400, deadline=None)
@given(label_cases())
def test_coerce_reads_as_documented_or_raises(case):
    y, encoding, num_classes, like, _ = case
    try:
        t = lg.Targets.coerce(y, num_classes=num_classes, encoding=encoding, like=like)
    except (ValueError, TypeError):
        return  # a clear refusal is always allowed; a wrong reading is not
    enc = expected_encoding(y, encoding, num_classes, like)
    assert enc is not None, "read an input whose encoding the docs leave open or refuse"
    assert t.encoding == enc
    ref = reference(y, enc, t.num_classes)
    assert ref is not None, f"accepted invalid {enc} values {y.tolist()}"
    positive, known = ref
    assert torch.equal(t.positive, positive) and torch.equal(t.known, known)
    if like is not None:
        assert t.shape == like.shape
    if enc == "index":
        assert num_classes is None or t.num_classes == num_classes
        assert torch.equal(t.indices, y.long())
    else:
        assert t.num_classes == y.shape[1]
        assert torch.equal(
            t.values,
            torch.where(known, positive.float() if enc != "soft" else y.float().clamp(min=0), 0.0),
        )
