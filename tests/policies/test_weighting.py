"""class_weights and pos_neg_weights, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg
from _policy_helpers import assert_grads_equal, bce_entries, make_model, param_grads

pytestmark = pytest.mark.usefixtures("float64_default")


def test_class_weights_multihot_equals_bce_weight(multilabel_batch):
    x, y = multilabel_batch
    model = make_model()
    w = torch.tensor([0.5, 2.0, 0.0, 3.0])
    got = param_grads(model, bce_entries(lg.class_weights(w)(model(x), y), y).sum())
    ref = nn.BCEWithLogitsLoss(weight=w, reduction="sum")
    want = param_grads(model, ref(model(x), y.clamp(min=0).double()))
    assert_grads_equal(got, want)


@pytest.mark.parametrize(
    ("pos", "neg"), [(2.0, 0.25), ([1.0, 2.0, 3.0, 0.0], [0.5, 0.5, 1.0, 2.0])]
)
def test_pos_neg_weights_equals_reweighted_loss(multilabel_batch, pos, neg):
    x, y = multilabel_batch
    model = make_model()
    p, n = torch.as_tensor(pos), torch.as_tensor(neg)
    got = param_grads(model, bce_entries(lg.pos_neg_weights(pos, neg)(model(x), y), y).sum())
    weight = torch.where(y == 1, p, torch.where(y == 0, n, torch.ones(())))
    want = param_grads(model, (bce_entries(model(x), y) * weight).sum())
    assert_grads_equal(got, want)


def test_class_weights_indices_equals_cross_entropy_weight(singlelabel_batch):
    x, y = singlelabel_batch
    model = make_model()
    w = torch.tensor([0.5, 2.0, 1.0, 4.0])
    policy = lg.chain(lg.mask_unknown(), lg.class_weights(w))
    got = param_grads(model, F.cross_entropy(policy(model(x), y), y, reduction="sum"))
    want = param_grads(model, F.cross_entropy(model(x), y, weight=w, reduction="sum"))
    assert_grads_equal(got, want)
