"""Policies on segmentation (N, C, H, W) and token (N, T, C) layouts, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg
from _policy_helpers import assert_grads_equal, bce_entries, param_grads

pytestmark = pytest.mark.usefixtures("float64_default")


def test_segmentation_shape(singlelabel_batch):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1).double()
    x = torch.randn(2, 3, 5, 5)
    y = torch.randint(0, 4, (2, 5, 5))
    y[0, 0, :3] = -100
    w = torch.tensor([1.0, 0.5, 2.0, 3.0])
    policy = lg.chain(lg.mask_unknown(), lg.class_weights(w))
    got = param_grads(conv, F.cross_entropy(policy(conv(x), y), y, reduction="sum"))
    want = param_grads(conv, F.cross_entropy(conv(x), y, weight=w, reduction="sum"))
    assert_grads_equal(got, want)


def test_token_classification_shape():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4).double()
    x = torch.randn(3, 6, 5)  # (N, T, D) -> logits (N, T, C)
    y = torch.randint(0, 4, (3, 6))
    y[1, 4:] = -100
    w = torch.tensor([1.0, 0.5, 2.0, 3.0])
    policy = lg.chain(lg.mask_unknown(), lg.class_weights(w))
    z = policy(lin(x), y, class_dim=-1)
    got = param_grads(lin, F.cross_entropy(z.movedim(-1, 1), y, reduction="sum"))
    want = param_grads(lin, F.cross_entropy(lin(x).movedim(-1, 1), y, weight=w, reduction="sum"))
    assert_grads_equal(got, want)


def test_multilabel_segmentation_class_dim_1():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1).double()
    x = torch.randn(2, 3, 3, 3)
    y = torch.randint(-1, 2, (2, 4, 3, 3))
    w = torch.tensor([1.0, 0.5, 2.0, 3.0]).view(1, 4, 1, 1)
    policy = lg.chain(lg.mask_unknown(), lg.class_weights(w.flatten()))
    got = param_grads(conv, bce_entries(policy(conv(x), y), y).sum())
    want = param_grads(conv, (bce_entries(conv(x), y) * w * (y >= 0)).sum())
    assert_grads_equal(got, want)
