"""per_label_losses: the K losses sum to the ordinary mean loss and match per-label references."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import labelgrad as lg


def _z(*shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)


def test_bce_per_class_matches_loop_and_sums_to_mean() -> None:
    z = _z(7, 5)
    y = torch.randint(0, 2, (7, 5))
    losses = lg.per_label_losses(z, y, loss="bce")
    n_known = z.numel()
    ref = (
        torch.stack(
            [
                F.binary_cross_entropy_with_logits(z[:, c], y[:, c].double(), reduction="sum")
                for c in range(5)
            ]
        )
        / n_known
    )
    torch.testing.assert_close(losses, ref)
    torch.testing.assert_close(losses.sum(), F.binary_cross_entropy_with_logits(z, y.double()))


def test_partial_labels_mean_over_known_entries() -> None:
    z = _z(6, 4)
    y = torch.tensor(
        [[1, -1, 0, 1], [0, 0, -1, -1], [1, 1, 1, 0], [-1, -1, -1, -1], [0, 1, 0, 1], [1, 0, 0, 0]]
    )
    losses = lg.per_label_losses(z, y, groups=[[0, 3], [1, 2]])
    known = y >= 0
    ref = F.binary_cross_entropy_with_logits(z[known], y[known].double())
    torch.testing.assert_close(losses.sum(), ref)
    g0 = F.binary_cross_entropy_with_logits(
        z[:, [0, 3]][known[:, [0, 3]]], y[:, [0, 3]][known[:, [0, 3]]].double(), reduction="sum"
    )
    torch.testing.assert_close(losses[0], g0 / known.sum())


def test_groups_as_tensor_equal_groups_as_lists() -> None:
    z, y = _z(5, 6), torch.randint(0, 2, (5, 6))
    a = lg.per_label_losses(z, y, groups=[[0, 2, 4], [1], [3, 5]])
    b = lg.per_label_losses(z, y, groups=torch.tensor([0, 1, 0, 2, 0, 2]))
    torch.testing.assert_close(a, b)


def test_ce_index_groups_with_ignore_index() -> None:
    z = _z(9, 4)
    y = torch.tensor([0, 1, 2, 3, -100, 1, 1, 0, -100])
    groups = [[0, 1], [2, 3]]
    losses = lg.per_label_losses(z, y, loss="ce", groups=groups)
    torch.testing.assert_close(losses.sum(), F.cross_entropy(z, y, ignore_index=-100))
    per = F.cross_entropy(z, y, ignore_index=-100, reduction="none")
    valid = y != -100
    in0 = valid & ((y == 0) | (y == 1))
    torch.testing.assert_close(losses[0], per[in0].sum() / valid.sum())
    assert lg.aggregation.loss_structure(losses).kind == "sample"


def test_ce_sequence_class_dim_last() -> None:
    z = _z(3, 5, 4)  # (N, T, C)
    y = torch.randint(0, 4, (3, 5))
    y[0, 1] = -100
    losses = lg.per_label_losses(z, y, loss="ce", class_dim=-1)
    torch.testing.assert_close(losses.sum(), F.cross_entropy(z.reshape(-1, 4), y.reshape(-1)))


def test_ce_soft_targets_sum_to_crossentropy() -> None:
    z = _z(6, 3)
    p = torch.softmax(torch.randn(6, 3, dtype=torch.float64), dim=1)
    losses = lg.per_label_losses(z, p, loss="ce")
    torch.testing.assert_close(losses.sum(), F.cross_entropy(z, p))
    torch.testing.assert_close(losses, -(p * torch.log_softmax(z, 1)).sum(0) / 6)


def test_focal_matches_formula() -> None:
    z, y = _z(8, 3), torch.randint(0, 2, (8, 3)).double()
    losses = lg.per_label_losses(z, y.long(), loss="focal")
    p = torch.sigmoid(z)
    pt = p * y + (1 - p) * (1 - y)
    at = 0.25 * y + 0.75 * (1 - y)
    ref = (
        (at * (1 - pt) ** 2 * F.binary_cross_entropy_with_logits(z, y, reduction="none")).mean(0)
        * 8
        / 24
    )
    torch.testing.assert_close(losses, ref)


def test_callable_loss() -> None:
    z, y = _z(4, 3), torch.randint(0, 2, (4, 3))
    fn = functools.partial(F.binary_cross_entropy_with_logits, reduction="none")
    torch.testing.assert_close(lg.per_label_losses(z, y, loss=fn), lg.per_label_losses(z, y))
    with pytest.raises(ValueError, match="elementwise"):
        lg.per_label_losses(z, y, loss=lambda a, b: a.sum())


def test_all_unknown_and_empty_give_zero_gradient() -> None:
    z = _z(3, 2)
    losses = lg.per_label_losses(z, -torch.ones(3, 2, dtype=torch.long))
    losses.sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    z2 = _z(0, 4)
    losses = lg.per_label_losses(z2, torch.zeros(0, dtype=torch.long), loss="ce")
    losses.sum().backward()
    assert losses.shape == (4,)
    assert torch.equal(z2.grad, torch.zeros_like(z2))
    z3 = _z(2, 3)
    lg.per_label_losses(z3, torch.tensor([-100, -100]), loss="ce").sum().backward()
    assert torch.equal(z3.grad, torch.zeros_like(z3))


def test_composes_with_policy() -> None:
    z = _z(6, 3)
    y = torch.randint(0, 2, (6, 3))
    w = torch.tensor([0.5, 2.0, 1.0])
    policy = lg.class_weights(w)
    lg.per_label_losses(policy(z, y), y).sum().backward()
    ref = torch.autograd.grad(
        F.binary_cross_entropy_with_logits(z, y.double(), weight=w.double()), z
    )[0]
    torch.testing.assert_close(z.grad, ref)


@pytest.mark.parametrize(
    ("groups", "error", "match"),
    [
        ([[0, 1], [1, 2]], ValueError, "overlap"),
        ([[0], [2]], ValueError, "cover"),
        ([[0, 1, 2], [5]], ValueError, "out of range"),
        ([[0, 1, 2], []], ValueError, "empty"),
        (torch.tensor([0, 2, 2]), ValueError, "unused"),
        (torch.tensor([0, 1]), ValueError, "shape"),
        (torch.tensor([0.0, 1.0, 1.0]), TypeError, "integer"),
        ("abc", TypeError, "groups"),
    ],
)
def test_bad_groups(groups: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        lg.per_label_losses(_z(2, 3), torch.zeros(2, 3, dtype=torch.long), groups=groups)  # type: ignore[arg-type]


def test_bad_loss_name() -> None:
    with pytest.raises(ValueError, match="loss must be"):
        lg.per_label_losses(_z(2, 3), torch.zeros(2, 3, dtype=torch.long), loss="mse")  # type: ignore[arg-type]


def test_cpu_targets_follow_the_logits_device() -> None:
    """Labels often stay on the CPU; the losses must be computed on the logits' device."""
    import labelgrad as lg

    logits = torch.zeros(4, 3, device="meta")
    losses = lg.per_label_losses(logits, torch.tensor([[1, 0, -1]] * 4), loss="bce")
    assert losses.device.type == "meta"
    assert losses.shape == (3,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"focal_gamma": float("nan")}, r"^focal_gamma must be a finite number >= 0, got nan$"),
        ({"focal_gamma": -1.0}, r"^focal_gamma must be a finite number >= 0"),
        ({"focal_gamma": float("inf")}, r"^focal_gamma must be a finite number >= 0"),
        ({"focal_alpha": 1.5}, r"^focal_alpha must be in \[0, 1\]"),
        ({"focal_alpha": -0.5}, r"^focal_alpha must be in \[0, 1\]"),
        ({"focal_alpha": float("nan")}, r"^focal_alpha must be in \[0, 1\]"),
    ],
)
def test_focal_parameters_are_checked(kwargs: dict[str, float], match: str) -> None:
    z = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        lg.per_label_losses(z, torch.randint(0, 2, (4, 3)), loss="focal", **kwargs)
    with pytest.raises(TypeError, match="focal_gamma must be a real number"):
        lg.per_label_losses(z, torch.randint(0, 2, (4, 3)), loss="focal", focal_gamma="2")  # type: ignore[arg-type]


def test_focal_alpha_minus_one_disables_the_weighting() -> None:
    z, y = torch.randn(5, 3), torch.randint(0, 2, (5, 3)).float()
    got = lg.per_label_losses(z, y, loss="focal", focal_alpha=-1).sum()
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    p_t = torch.sigmoid(z) * y + (1 - torch.sigmoid(z)) * (1 - y)
    torch.testing.assert_close(got, (ce * (1 - p_t) ** 2).mean())


def test_structure_lives_on_the_graph_not_on_the_tensor() -> None:
    z = torch.randn(6, 4, requires_grad=True)
    losses = lg.per_label_losses(z, torch.randint(0, 2, (6, 4)))
    assert not any("labelgrad" in name for name in vars(losses))  # no attribute on the tensor
    structure = lg.aggregation.loss_structure(losses)
    assert structure is not None
    assert structure.logits is z
    assert structure.kind == "column"


@pytest.mark.parametrize(
    "op",
    [
        lambda t: t * 2.0,
        lambda t: t.clone(),
        lambda t: t / 3,
        lambda t: -t,
        lambda t: (t * torch.arange(1.0, 5.0)).double(),
        lambda t: t + 1.0,
    ],
)
def test_elementwise_operations_keep_the_structure(op: object) -> None:
    z = torch.randn(6, 4, requires_grad=True)
    losses = lg.per_label_losses(z, torch.randint(0, 2, (6, 4)))
    assert lg.aggregation.loss_structure(op(losses)) is lg.aggregation.loss_structure(losses)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("op", "why"),
    [
        (lambda t: t.flip(0), "FlipBackward0 between lg.per_label_losses and these losses"),
        (lambda t: t[[1, 0, 2, 3]], "IndexBackward0 between"),
        (lambda t: t + t.flip(0), "combines the losses with another tensor"),
        (lambda t: t.cumsum(0), "CumsumBackward0 between"),
    ],
)
def test_mixing_operations_drop_the_structure_and_say_why(op: object, why: str) -> None:
    z = torch.randn(6, 4, requires_grad=True)
    losses = op(lg.per_label_losses(z, torch.randint(0, 2, (6, 4))))  # type: ignore[operator]
    structure, note = lg.aggregation.find_structure(losses)
    assert structure is None
    assert why in note


def test_ce_index_ignored_sample_with_nan_logits_leaves_the_losses_finite() -> None:
    # As CrossEntropyLoss(ignore_index=...): an ignored sample's logits take no part in the
    # loss (they used to reach it as 0 * sum(logits), which a NaN logit turned into NaN).
    z = torch.randn(4, 5)
    z[0, 1] = float("nan")
    y = torch.tensor([-100, 1, 2, 4])
    losses = lg.per_label_losses(z, y, loss="ce")
    assert bool(torch.isfinite(losses).all())
    torch.testing.assert_close(losses.sum(), F.cross_entropy(z, y, ignore_index=-100))


def test_group_ids_of_a_tensor_are_checked_again_after_an_in_place_edit() -> None:
    groups = torch.arange(6) % 3
    ids, k = lg.aggregation.group_ids(groups, num_classes=6)
    assert (ids.tolist(), k) == ([0, 1, 2, 0, 1, 2], 3)
    ids[0] = 7  # the returned ids are the caller's: nothing cached changes
    assert lg.aggregation.group_ids(groups, num_classes=6)[0].tolist() == [0, 1, 2, 0, 1, 2]
    groups[2] = 5  # group ids 2..4 now unused: the cached check must not answer
    with pytest.raises(ValueError, match="unused ids"):
        lg.aggregation.group_ids(groups, num_classes=6)
    groups[2] = 2
    with pytest.raises(ValueError, match="shape"):
        lg.aggregation.group_ids(groups, num_classes=5)
    with torch.inference_mode():
        frozen = torch.arange(4) % 2
    assert lg.aggregation.group_ids(frozen, num_classes=4)[1] == 2
