"""The autograd-graph walks the engines rely on."""

from __future__ import annotations

import torch
from torch import nn

import labelgrad as lg
from labelgrad.aggregation import _graph


def test_linear_head_between_only_for_the_head_itself() -> None:
    torch.manual_seed(0)
    trunk, head = nn.Linear(3, 4), nn.Linear(4, 2)
    feats = trunk(torch.randn(5, 3))
    assert _graph.linear_head_between(head(feats), feats, head)
    assert not _graph.linear_head_between(head(feats).relu(), feats, head)
    assert not _graph.linear_head_between(head(feats), feats, nn.Linear(4, 2))
    policy = lg.clip_per_sample(max_norm=1.0)
    assert not _graph.linear_head_between(policy(head(feats), torch.ones(5, 2)), feats, head)
    seq = head(feats.reshape(5, 1, 4)).reshape(5, 2)  # reshapes around the head are fine
    assert _graph.linear_head_between(seq, feats, head)


def test_reaches_and_leaves() -> None:
    w = torch.randn(3, requires_grad=True)
    v = torch.randn(3, requires_grad=True)
    mid = w * 2
    out = (mid + 1).sum()
    assert _graph.reaches(out.grad_fn, mid.grad_fn)
    assert not _graph.reaches(out.grad_fn, (v * 2).grad_fn)
    assert _graph.reaches_leaf(out, w)
    assert not _graph.reaches_leaf(out, v)
    assert [leaf is w for leaf in _graph.leaves_reached(out)] == [True]
    assert _graph.leaves_reached(out, stop=mid.grad_fn) == []  # not expanded past ``stop``
