"""Policies' argument and call errors."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg

pytestmark = pytest.mark.usefixtures("float64_default")


def test_policy_without_targets_says_it_needs_them():
    z = torch.zeros(2, 3, requires_grad=True)
    for policy in (lg.mask_unknown(), lg.class_weights([1.0, 1.0, 1.0]), lg.eqlv2(num_classes=3)):
        with pytest.raises(
            ValueError, match=r"reads the labels: call it as policy\(logits, targets\)"
        ):
            policy(z)
    lg.chain(
        lg.clip_per_class(1.0), lg.freeze_classes([0]), lg.mask(torch.ones(3, dtype=torch.bool))
    )(z)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: lg.class_weights([1.0, -1.0]),
            ValueError,
            "weight must be finite and non-negative",
        ),
        (lambda: lg.class_weights([1.0, float("nan")]), ValueError, "weight must be finite"),
        (lambda: lg.class_weights(torch.ones(2, 2)), ValueError, r"weight must be a 1-D tensor"),
        (lambda: lg.class_weights(2.0), TypeError, "weight must be a 1-D"),
        (lambda: lg.pos_neg_weights(pos=[1.0, 2.0], neg=[1.0]), ValueError, "same length"),
        (lambda: lg.pos_neg_weights(pos=-1.0), ValueError, "pos must be a finite non-negative"),
        (lambda: lg.clip_per_class(0.0), ValueError, "max_norm must be a finite positive"),
        (lambda: lg.clip_per_sample(float("inf")), ValueError, "max_norm"),
        (lambda: lg.mask(torch.ones(3)), ValueError, r"keep must be a \(C,\) bool tensor"),
        (
            lambda: lg.freeze_classes([0, 5], num_classes=3),
            ValueError,
            "classes holds class indices out of range",
        ),
        (lambda: lg.freeze_classes([0.5]), TypeError, "classes must hold int"),
        (lambda: lg.eqlv2(num_classes=0), ValueError, "num_classes must be a positive int"),
        (lambda: lg.monitor(num_classes=True), ValueError, "num_classes must be a positive int"),
        (lambda: lg.monitor(3, history=-1), ValueError, "history must be a non-negative int"),
        (lambda: lg.schedule(lg.mask_unknown(), 1.5), ValueError, "start_step must be a non"),
        (lambda: lg.schedule(lg.mask_unknown()).set_step(-2), ValueError, "step must be a non"),
        (
            lambda: lg.schedule(lg.mask_unknown(), start_step=3, end_step=1),
            ValueError,
            "end_step=1",
        ),
        (
            lambda: lg.chain(lg.eqlv2(num_classes=3), lg.monitor(4)),
            ValueError,
            "different num_classes",
        ),
        (lambda: lg.chain(lg.mask_unknown(), "mask"), TypeError, "chain argument 1"),
    ],
)
def test_constructor_errors_name_the_argument(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_call_errors_name_the_problem():
    z = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="built for num_classes=4"):
        lg.class_weights(torch.ones(4))(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="built for num_classes=2"):
        lg.mask(torch.tensor([True, False]))(z)
    with pytest.raises(ValueError, match="class index 3 is out of range"):
        lg.mask_unknown()(z, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"must have shape \(2,\)"):
        lg.mask_unknown()(z, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="floating dtype"):
        lg.mask_unknown()(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class_dim=2 is out of range"):
        lg.mask_unknown()(z, torch.tensor([0, 1]), class_dim=2)
    with pytest.raises(ValueError, match="keep callable must return a bool tensor"):
        z2 = torch.zeros(2, 3, requires_grad=True)
        lg.mask(lambda t: t.values)(z2, torch.tensor([0, 1])).sum().backward()
