"""chain: composition of policies in one gate, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from _policy_helpers import assert_grads_equal, bce_entries, make_model, param_grads

pytestmark = pytest.mark.usefixtures("float64_default")


def test_chain_equals_product_of_weights(multilabel_batch):
    x, y = multilabel_batch
    model = make_model()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    policy = lg.chain(lg.mask_unknown(), lg.class_weights(w), lg.pos_neg_weights(pos=2.0, neg=1.0))
    got = param_grads(model, bce_entries(policy(model(x), y), y).sum())
    weight = (y >= 0) * w * torch.where(y == 1, 2.0, 1.0)
    want = param_grads(model, (bce_entries(model(x), y) * weight).sum())
    assert_grads_equal(got, want)
