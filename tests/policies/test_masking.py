"""mask, mask_unknown and freeze_classes, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg
from _policy_helpers import assert_grads_equal, bce_entries, make_model, param_grads

pytestmark = pytest.mark.usefixtures("float64_default")


def test_mask_unknown_equals_loss_on_known_entries(multilabel_batch):
    x, y = multilabel_batch
    model = make_model()
    got = param_grads(model, bce_entries(lg.mask_unknown()(model(x), y), y).sum())
    want = param_grads(model, (bce_entries(model(x), y) * (y >= 0)).sum())
    assert_grads_equal(got, want)


def test_freeze_classes_and_mask_vector(multilabel_batch):
    x, y = multilabel_batch
    model = make_model()
    keep = torch.tensor([True, False, True, False])
    want = param_grads(model, (bce_entries(model(x), y) * keep).sum())
    got_freeze = param_grads(model, bce_entries(lg.freeze_classes([1, 3])(model(x)), y).sum())
    got_mask = param_grads(model, bce_entries(lg.mask(keep)(model(x)), y).sum())
    assert_grads_equal(got_freeze, want)
    assert_grads_equal(got_mask, want)


def test_mask_callable_sees_targets(multilabel_batch):
    x, y = multilabel_batch
    model = make_model()
    policy = lg.mask(lambda t: t.positive | ~t.known)  # drop the known negatives
    got = param_grads(model, bce_entries(policy(model(x), y), y).sum())
    want = param_grads(model, (bce_entries(model(x), y) * (y != 0)).sum())
    assert_grads_equal(got, want)


def test_mask_unknown_with_ignore_index_drops_whole_sample(singlelabel_batch):
    x, y = singlelabel_batch
    model = make_model()
    z = model(x)
    z.retain_grad()
    # Without ignore_index in the loss, only the policy can drop samples 1 and 5.
    loss = F.cross_entropy(lg.mask_unknown()(z, y), y.clamp(min=0), reduction="sum")
    loss.backward()
    assert torch.equal(z.grad[[1, 5]], torch.zeros(2, 4))
    keep = (y != -100).double()
    want = param_grads(
        model, (F.cross_entropy(model(x), y.clamp(min=0), reduction="none") * keep).sum()
    )
    got = [p.grad for p in model.parameters()]
    assert_grads_equal(got, want)
