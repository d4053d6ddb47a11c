"""Targets.coerce: every encoding, every class axis, against a plain reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import labelgrad as lg


def reference_from_indices(idx: np.ndarray, c: int, ignore: int, class_dim: int):
    """Per-entry loops over the label array: slow, obviously right."""
    shape = (*idx.shape, c)
    pos = np.zeros(shape, dtype=bool)
    known = np.zeros(shape, dtype=bool)
    for pos_idx in np.ndindex(idx.shape):
        y = idx[pos_idx]
        if y != ignore:
            known[pos_idx] = True
            pos[(*pos_idx, y)] = True
    return np.moveaxis(pos, -1, class_dim), np.moveaxis(known, -1, class_dim)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 4),
    c=st.integers(1, 5),
    extra=st.lists(st.integers(1, 3), max_size=2),
    class_dim_pos=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_indices_match_reference(n, c, extra, class_dim_pos, seed):
    rng = np.random.default_rng(seed)
    ndim_logits = 2 + len(extra)
    class_dim = 1 + (class_dim_pos - 1) % (ndim_logits - 1)
    label_shape = (n, *extra)
    idx = rng.integers(0, c, size=label_shape)
    idx[rng.random(label_shape) < 0.2] = -100
    t = lg.Targets.coerce(
        torch.from_numpy(idx), num_classes=c, class_dim=class_dim, encoding="index"
    )
    pos, known = reference_from_indices(idx, c, -100, class_dim)
    assert t.encoding == "index"
    assert t.class_dim == class_dim
    assert torch.equal(t.positive, torch.from_numpy(pos))
    assert torch.equal(t.known, torch.from_numpy(known))
    assert t.num_classes == c


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 4),
    c=st.integers(1, 5),
    extra=st.lists(st.integers(1, 3), max_size=2),
    encoding=st.sampled_from(["multi_hot_int", "multi_hot_float", "bool", "soft"]),
    seed=st.integers(0, 2**16),
)
def test_dense_match_reference(n, c, extra, encoding, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c, *extra)
    if encoding == "bool":
        y = rng.random(shape) < 0.5
        expect_pos, expect_known = y, np.ones(shape, dtype=bool)
    elif encoding == "soft":
        y = rng.random(shape).astype(np.float32)
        y[rng.random(shape) < 0.2] = -1
        expect_pos, expect_known = y >= 0.5, y >= 0
    else:
        y = rng.integers(-1, 2, size=shape)
        if encoding == "multi_hot_float":
            y = y.astype(np.float32)
        expect_pos, expect_known = y == 1, y != -1
    like = torch.zeros(shape)
    t = lg.Targets.coerce(torch.from_numpy(y), like=like)
    assert t.num_classes == c
    assert torch.equal(t.positive, torch.from_numpy(expect_pos))
    assert torch.equal(t.known, torch.from_numpy(expect_known))
    expect_values = np.where(expect_known, np.where(encoding == "bool", y, y), 0).astype(np.float32)
    assert torch.equal(t.values, torch.from_numpy(expect_values))


def test_token_classification_class_last():
    logits = torch.zeros(2, 3, 4)  # (N, T, C)
    y = torch.tensor([[0, 3, -100], [1, 1, 2]])
    t = lg.Targets.coerce(y, class_dim=-1, like=logits)
    assert t.class_dim == 2
    assert t.positive.shape == (2, 3, 4)
    assert t.positive[0, 1].tolist() == [False, False, False, True]
    assert not t.known[0, 2].any()


def test_class_last_layout_is_n_s_c():
    y = torch.randint(0, 3, (2, 4, 5))  # segmentation labels (N, H, W)
    t = lg.Targets.coerce(y, num_classes=3)
    flat = t.class_last()
    assert flat.positive.shape == (2, 20, 3)
    assert torch.equal(flat.indices, y.reshape(2, 20))
    assert torch.equal(flat.positive.int().argmax(-1), y.reshape(2, 20))


def test_targets_passthrough_and_mismatch():
    t = lg.Targets.coerce(torch.tensor([0, 1]), num_classes=3)
    assert lg.Targets.coerce(t) is t
    with pytest.raises(ValueError, match="num_classes=4"):
        lg.Targets.coerce(t, num_classes=4)
    with pytest.raises(ValueError, match="do not match logits"):
        lg.Targets.coerce(t, like=torch.zeros(3, 3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"targets": torch.tensor([0, 3])}, ValueError, "class index 3 is out of range"),
        ({"targets": torch.tensor([0, -2])}, ValueError, "out of range"),
        ({"targets": [0, 1]}, TypeError, "targets must be a torch.Tensor"),
        ({"targets": torch.tensor([[0, 2, 1]]), "encoding": "multi_hot"}, ValueError, "only 0, 1"),
        ({"targets": torch.tensor([[0.5, 1.5, 0.0]])}, ValueError, "probabilities in"),
        ({"targets": torch.tensor([[0.5, float("nan"), 0.0]])}, ValueError, "NaN"),
        ({"targets": torch.tensor([0.0, 1.0]), "encoding": "index"}, TypeError, "integer dtype"),
        ({"targets": torch.tensor([[0, 1, 1]])}, ValueError, "could be class indices"),
        (
            {"targets": torch.tensor([[0, 1]]), "num_classes": 3, "encoding": "multi_hot"},
            ValueError,
            "num_classes=3 does not match",
        ),
        ({"targets": torch.tensor([0]), "class_dim": 5}, ValueError, "class_dim=5 is out of range"),
        ({"targets": torch.tensor([0]), "class_dim": 0}, ValueError, "must not be 0"),
        ({"targets": torch.tensor([0]), "num_classes": 0}, ValueError, "positive int"),
        ({"targets": torch.tensor([0]), "encoding": "onehot"}, ValueError, "encoding must be"),
    ],
)
def test_bad_input_names_the_problem(kwargs, error, match):
    kwargs.setdefault("num_classes", 3)
    targets = kwargs.pop("targets")
    with pytest.raises(error, match=match):
        lg.Targets.coerce(targets, **kwargs)


def test_shape_must_match_logits():
    with pytest.raises(ValueError, match=r"must have shape \(4,\)"):
        lg.Targets.coerce(torch.tensor([0, 1, 2]), like=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="logits' shape"):
        lg.Targets.coerce(torch.zeros(4, 2), like=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="fit neither"):
        lg.Targets.coerce(torch.zeros(4, 3, 2, 2, dtype=torch.long), like=torch.zeros(4, 3))


def test_ambiguity_is_resolved_by_explicit_arguments():
    y = torch.tensor([[0, 1, 1]])
    as_multi_hot = lg.Targets.coerce(y, num_classes=3, encoding="multi_hot")
    as_indices = lg.Targets.coerce(y, num_classes=3, encoding="index")
    assert as_multi_hot.positive.shape == (1, 3)
    assert as_indices.positive.shape == (1, 3, 3)
    assert torch.equal(lg.Targets.coerce(y, like=torch.zeros(1, 3)).positive, as_multi_hot.positive)


EDGE_VALUES = [-1.0, 0.0, -0.0, 1.0, 0.5, 0.25, 1e-30, 1 - 2**-24, -0.5, -1e-30, -1.0 - 2**-20]
EDGE_VALUES += [1 + 2**-20, 2.0, -2.0, float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("encoding", ["soft", "multi_hot"])
def test_float_label_checks_accept_exactly_the_valid_values(dtype, encoding):
    # The float check is a few whole-tensor operators (issue 24): compare it, value by value and
    # in every floating dtype, with the definition (soft: [0, 1] or -1; multi-hot: -1, 0, 1).
    for value in EDGE_VALUES:
        y = torch.tensor([[0.0, value, 1.0]], dtype=dtype)
        v = y[0, 1].item()  # the value as the dtype holds it
        ok = v in (-1.0, 0.0, 1.0) if encoding == "multi_hot" else (0 <= v <= 1 or v == -1)
        if ok:
            t = lg.Targets.coerce(y, num_classes=3, encoding=encoding)
            assert t.known.tolist() == [[True, v != -1, True]]
            assert t.positive.tolist() == [[False, v >= 0.5, True]]
        else:
            with pytest.raises(ValueError, match=f"{encoding} targets must"):
                lg.Targets.coerce(y, num_classes=3, encoding=encoding)


class _CountEqual(TorchDispatchMode):
    """Counts torch.equal calls: every value check of Targets.coerce ends in one."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls += func.overloadpacket is torch.ops.aten.equal
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("labels", ["int", "float"])
def test_one_targets_is_validated_once_for_a_chain_row_rules_and_losses(labels):
    # Issue 24 "labels once": a chain, RowRules.step and per_label_losses share one Targets;
    # the raw tensor would be checked by each of them.
    c = 5
    y = torch.tensor([[1, -1, 0, 0, 1], [0, 1, -1, 1, 0]])
    y = y.float() if labels == "float" else y
    head = torch.nn.Linear(3, c)
    opt = lg.RowRules(torch.optim.SGD(head.parameters(), lr=0.1), rows=head, skip_absent=True)
    policy = lg.chain(lg.mask_unknown(), lg.clip_per_class(1.0))

    def consumers(t):
        z = policy(head(torch.randn(2, 3)), t)
        lg.per_label_losses(z, t).sum().backward()
        opt.step(targets=t)
        opt.zero_grad()

    with _CountEqual() as shared:
        t = lg.Targets.coerce(y, num_classes=c, encoding="multi_hot")
        consumers(t)
    assert shared.calls == 1
    if labels == "float":  # a raw float tensor is coerced (and checked) by each consumer
        with _CountEqual() as raw:
            consumers(y)
        assert raw.calls >= 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_labels_give_positive_and_values_when_read(dtype):
    # positive and values of float labels are computed on first read (issue 24): through
    # class_last() and to() they must still equal the definitions.
    y = torch.tensor([[0.2, -1.0, 1.0, 0.5], [0.0, 0.7, -1.0, 0.49]], dtype=dtype)
    t = lg.Targets.coerce(y, num_classes=4)
    assert t.float_labels is y and t.shape == y.shape
    for view in (t, t.class_last(), t.to("cpu")):
        flat = view.positive.reshape(2, 4)
        assert flat.tolist() == (y >= 0.5).tolist()
        values = view.values.reshape(2, 4)
        assert values.dtype == dtype
        assert values.tolist() == [[max(v, 0.0) for v in row] for row in y.tolist()]
    assert lg.Targets.coerce(torch.tensor([1, 0]), num_classes=2).float_labels is None
    with pytest.raises(ValueError, match="float_labels"):
        lg.Targets(None, torch.ones(1, 2, dtype=torch.bool), 2, 1, "soft")
    # The labels are read when positive/values are first read: a change in place in between
    # would silently change them; it is refused instead.
    y2 = y.clone()
    t2 = lg.Targets.coerce(y2, num_classes=4)
    y2[0, 0] = 1.0
    with pytest.raises(RuntimeError, match="modified in place"):
        _ = t2.positive
    with torch.inference_mode():
        y3 = y.clone()
    assert lg.Targets.coerce(y3, num_classes=4).positive.tolist() == (y >= 0.5).tolist()
