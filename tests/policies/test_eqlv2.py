"""EQLv2 against the published update, against plain autograd of the equivalent loss in float64."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg
from _policy_helpers import assert_grads_equal, bce_entries, make_model, param_grads

pytestmark = pytest.mark.usefixtures("float64_default")


class PublishedEQLv2:
    """The update of Tan et al.'s published EQLv2 loss, written from the paper's formulas.

    The loss is sum(BCE(z, y) * weight); the statistics accumulate |dBCE/dz| * weight of the
    positives and negatives of each class after the batch, in float32 (as labelgrad's buffers).
    """

    def __init__(self, c, gamma=12.0, mu=0.8, alpha=4.0):
        self.pos = torch.zeros(c, dtype=torch.float32)
        self.neg = torch.zeros(c, dtype=torch.float32)
        self.first = True
        self.gamma, self.mu, self.alpha = gamma, mu, alpha

    def weight(self, y):
        if self.first:
            return torch.ones(y.shape)
        neg_w = torch.sigmoid(self.gamma * (self.pos / (self.neg + 1e-10) - self.mu))
        pos_w = 1 + self.alpha * (1 - neg_w)
        return y * pos_w.double() + (1 - y) * neg_w.double()

    def loss(self, z, y):
        w = self.weight(y)
        loss = (bce_entries(z, y) * w).sum()
        grad = (torch.sigmoid(z.detach()) - y).abs() * w
        self.pos += (grad * y).float().sum(0)
        self.neg += (grad * (1 - y)).float().sum(0)
        self.first = False
        return loss


def test_eqlv2_matches_published_update_over_batches():
    model = make_model(c=5)
    policy = lg.eqlv2(num_classes=5)
    ref = PublishedEQLv2(5)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        x = torch.randn(16, 6, generator=g)
        # long-tailed multi-label batch: class c positive with probability 0.5 ** c
        y = (torch.rand(16, 5, generator=g) < 0.5 ** torch.arange(1, 6)).double()
        got = param_grads(model, bce_entries(policy(model(x), y), y).sum())
        want = param_grads(model, ref.loss(model(x), y))
        assert_grads_equal(got, want)
        torch.testing.assert_close(policy.pos_grad, ref.pos, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(policy.neg_grad, ref.neg, rtol=1e-5, atol=1e-6)
    pos_w, neg_w = policy.weights()
    assert pos_w.dtype == neg_w.dtype == torch.float32
    torch.testing.assert_close(pos_w, 1 + 4 * (1 - neg_w))


def test_eqlv2_leaves_unknown_entries_alone_and_uncounted():
    policy = lg.eqlv2(num_classes=3)
    z = torch.zeros(2, 3, requires_grad=True)
    y = torch.tensor([[1, -1, 0], [0, -1, 1]])
    (policy(z, y) * 2).sum().backward()
    assert policy.pos_grad.tolist() == [2.0, 0.0, 2.0]
    assert policy.neg_grad.tolist() == [2.0, 0.0, 2.0]
    z2 = torch.zeros(2, 3, requires_grad=True)
    policy(z2, y).sum().backward()
    assert z2.grad[:, 1].tolist() == [1.0, 1.0]  # unknown: untouched
