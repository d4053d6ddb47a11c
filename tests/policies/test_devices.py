"""Policies across devices, without host syncs (meta tensors)."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg

pytestmark = pytest.mark.usefixtures("float64_default")


def test_hot_path_has_no_host_sync_on_meta_tensors():
    """Meta tensors have no values: any .item()/bool()/.tolist() on the path would raise."""
    policy = lg.chain(
        lg.mask_unknown(),
        lg.class_weights(torch.ones(4)),
        lg.pos_neg_weights(2.0, 0.5),
        lg.eqlv2(num_classes=4),
        lg.clip_per_class(1.0),
        lg.clip_per_sample(1.0),
        lg.monitor(4, history=3),
        lg.schedule(lg.freeze_classes([1]), start_step=1),
    ).to("meta")
    z = torch.empty(8, 4, device="meta", requires_grad=True)
    for y in (torch.empty(8, 4, device="meta"), torch.empty(8, dtype=torch.long, device="meta")):
        (g,) = torch.autograd.grad(policy(z, y).sum(), z)
        assert g.shape == z.shape and g.device.type == "meta"


@pytest.mark.parametrize(
    "policy",
    [
        lg.mask(torch.tensor([True, False, True])),
        lg.class_weights(torch.tensor([1.0, 2.0, 3.0])),
        lg.freeze_classes([1]),
    ],
    ids=["mask", "class_weights", "freeze_classes"],
)
def test_class_vector_policies_follow_the_gradient_device(policy):
    """A policy left on the CPU works on logits elsewhere (its (C,) vector follows the grad)."""
    z = torch.empty(8, 3, device="meta", requires_grad=True)
    y = torch.empty(8, dtype=torch.long, device="meta")
    (g,) = torch.autograd.grad(policy(z, y).sum(), z)
    assert g.shape == z.shape and g.device.type == "meta"


def test_targets_on_another_device_follow_the_logits():
    """CPU labels (validated there) work with logits elsewhere: the gate moves them."""
    policy = lg.chain(
        lg.mask_unknown(),
        lg.class_weights(torch.ones(3)),
        lg.pos_neg_weights(2.0, 0.5),
        lg.eqlv2(num_classes=3),
    ).to("meta")
    z = torch.empty(8, 3, device="meta", requires_grad=True)
    for y in (torch.tensor([0, 1, 2, -100, 0, 1, 2, 0]), torch.tensor([[1, 0, -1]] * 8)):
        (g,) = torch.autograd.grad(policy(z, y).sum(), z)
        assert g.shape == z.shape and g.device.type == "meta"
    with pytest.raises(ValueError, match="out of range"):
        policy(z, torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]))  # still validated on the CPU


def test_clipping_makes_no_host_to_device_copy(monkeypatch):
    """torch.tensor(value, device=accelerator) is a pageable copy that waits for the stream."""
    real = torch.tensor

    def tensor(*args, device=None, **kwargs):
        if device is not None and torch.device(device).type != "cpu":
            raise AssertionError("host-to-device copy on the backward path")
        return real(*args, device=device, **kwargs)

    policy = lg.chain(lg.clip_per_class(1.0), lg.clip_per_sample(1.0))
    z = torch.empty(8, 3, device="meta", requires_grad=True)
    out = policy(z)
    monkeypatch.setattr(torch, "tensor", tensor)
    (g,) = torch.autograd.grad(out.sum(), z)
    assert g.device.type == "meta"
