"""Hard and careless inputs to the policies (issue 15): a clear error or the right answer."""

from __future__ import annotations

import pytest
import torch

import labelgrad as lg


def test_freeze_classes_bool_mask_of_the_wrong_length_is_refused():
    mask = torch.tensor([True, False, True])  # 3 entries for 4-class logits
    z = torch.zeros(2, 4, requires_grad=True)
    with pytest.raises(ValueError, match="built for num_classes=3"):
        lg.freeze_classes(mask)(z)
    with pytest.raises(ValueError, match=r"bool mask must have shape \(4,\)"):
        lg.freeze_classes(mask, num_classes=4)


def test_freeze_classes_out_of_range_fails_at_the_call_not_in_backward():
    z = torch.zeros(2, 3, requires_grad=True)
    policy = lg.freeze_classes([0, 5])  # num_classes unknown until the call
    with pytest.raises(ValueError, match="class 5, out of range for logits with 3 classes"):
        policy(z)
    with pytest.raises(ValueError, match="out of range"):
        lg.chain(lg.mask_unknown(), policy)(z, torch.tensor([0, 1]))


def test_freeze_classes_bool_mask_freezes_those_classes():
    z = torch.zeros(2, 3, requires_grad=True)
    lg.freeze_classes(torch.tensor([False, True, False]))(z).sum().backward()
    assert z.grad.tolist() == [[1.0, 0.0, 1.0]] * 2


def cubic_second_derivative(policy, z, y):
    (g,) = torch.autograd.grad((policy(z, y) ** 3).sum(), z, create_graph=True)
    return torch.autograd.grad(g.sum(), z)[0]


def test_double_backward_is_refused_with_a_clear_error():
    z = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    y = torch.tensor([[1, 0, 1]])
    policy = lg.class_weights([2.0, 3.0, 0.5])
    with pytest.raises(RuntimeError, match="ClassWeights does not support double backward"):
        cubic_second_derivative(policy, z, y)


def test_double_backward_counts_eqlv2_once_and_first_derivative_is_exact():
    z = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    y = torch.tensor([[1, 0, 1]])
    policy = lg.eqlv2(num_classes=3)
    (g,) = torch.autograd.grad((policy(z, y) ** 3).sum(), z, create_graph=True)
    torch.testing.assert_close(g, 3 * z.detach() ** 2)  # weights 1 before any statistics
    assert policy.num_updates.item() == 1
    with pytest.raises(RuntimeError, match="EQLv2 does not support double backward"):
        torch.autograd.grad(g.sum(), z)
    assert policy.num_updates.item() == 1


@pytest.mark.parametrize(
    "y", [torch.zeros(0, 3, dtype=torch.long), torch.full((4, 3), -1)], ids=["empty", "unknown"]
)
def test_eqlv2_batch_with_nothing_to_count_changes_nothing(y):
    policy = lg.eqlv2(num_classes=3)
    z = torch.zeros(4, 3, requires_grad=True)
    policy(z, torch.tensor([[1, 0, 0]] * 4)).sum().backward()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    weights = policy.weights()
    z2 = torch.zeros(y.shape[0], 3, requires_grad=True)
    policy(z2, y).sum().backward()
    for k, v in policy.state_dict().items():
        assert torch.equal(v, before[k]), k
    for a, b in zip(policy.weights(), weights, strict=True):
        assert torch.equal(a, b)


def test_eqlv2_fresh_policy_keeps_unit_weights_after_an_empty_batch():
    policy = lg.eqlv2(num_classes=3)
    z = torch.zeros(0, 3, requires_grad=True)
    policy(z, torch.zeros(0, dtype=torch.long)).sum().backward()
    pos_w, neg_w = policy.weights()
    assert pos_w.tolist() == [1.0] * 3 and neg_w.tolist() == [1.0] * 3


def test_eqlv2_statistics_on_another_device_name_both_devices():
    policy = lg.eqlv2(num_classes=3)  # buffers on the CPU
    z = torch.empty(2, 3, device="meta", requires_grad=True)
    with pytest.raises(ValueError, match="statistics are on cpu but the logits on meta"):
        policy(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"policy\.to"):
        lg.chain(lg.mask_unknown(), policy)(z, torch.tensor([0, 1]))


def test_monitor_refuses_a_huge_history_before_allocating():
    with pytest.raises(ValueError, match=r"history=1000000000000 x num_classes=3 needs .* GiB"):
        lg.monitor(3, history=10**12)
    with pytest.raises(ValueError, match="lower history"):
        lg.monitor(1_000_001, history=2048)  # a label typo that makes C huge


def test_class_weights_of_the_wrong_length_is_a_one_line_error():
    z = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ValueError) as info:
        lg.class_weights([1.0, 2.0])(z, torch.tensor([0, 1]))
    message = str(info.value)
    assert "\n" not in message and "num_classes=2" in message and "length 3" in message


@pytest.mark.parametrize("y", [torch.tensor([0.0, 1.0]), torch.tensor([[0.0], [1.0]])])
def test_float_class_indices_name_the_dtype(y):
    z = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(TypeError, match="look like class indices, which must have an integer"):
        lg.mask_unknown()(z, y.flatten())
    with pytest.raises(TypeError, match="integer dtype"):
        lg.Targets.coerce(y.flatten(), num_classes=3)


def test_freeze_classes_range_check_follows_a_loaded_state_dict():
    policy = lg.freeze_classes([0, 1])
    policy.load_state_dict({"classes": torch.tensor([0, 7])})
    with pytest.raises(ValueError, match="class 7, out of range"):
        policy(torch.zeros(2, 3, requires_grad=True))
