"""Level-1 policies against plain autograd of the equivalent reweighted loss, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg

TOL = {"rtol": 0.0, "atol": 1e-6}


@pytest.fixture(autouse=True)
def float64_default():
    """The references are compared in float64; restore the default for other modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_model(d_in: int = 6, c: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, c)).double()


def param_grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


def assert_grads_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **TOL)


@pytest.fixture
def multilabel_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 6, generator=g)
    y = torch.randint(-1, 2, (7, 4), generator=g)  # partial multi-hot: -1 = unknown
    return x, y


@pytest.fixture
def singlelabel_batch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 6, generator=g)
    y = torch.randint(0, 4, (9,), generator=g)
    y[[1, 5]] = -100
    return x, y


def bce_entries(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(z, y.clamp(min=0).to(z.dtype), reduction="none")


# ---------------------------------------------------------------- multi-hot / partial labels


def test_mask_unknown_equals_loss_on_known_entries(multilabel_batch):
    x, y = multilabel_batch
    model = make_model()
    got = param_grads(model, bce_entries(lg.mask_unknown()(model(x), y), y).sum())
    want = param_grads(model, (bce_entries(model(x), y) * (y >= 0)).sum())
    assert_grads_equal(got, want)


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


def test_chain_equals_product_of_weights(multilabel_batch):
    x, y = multilabel_batch
    model = make_model()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    policy = lg.chain(lg.mask_unknown(), lg.class_weights(w), lg.pos_neg_weights(pos=2.0, neg=1.0))
    got = param_grads(model, bce_entries(policy(model(x), y), y).sum())
    weight = (y >= 0) * w * torch.where(y == 1, 2.0, 1.0)
    want = param_grads(model, (bce_entries(model(x), y) * weight).sum())
    assert_grads_equal(got, want)


# ----------------------------------------------------------------------- class indices


def test_class_weights_indices_equals_cross_entropy_weight(singlelabel_batch):
    x, y = singlelabel_batch
    model = make_model()
    w = torch.tensor([0.5, 2.0, 1.0, 4.0])
    policy = lg.chain(lg.mask_unknown(), lg.class_weights(w))
    got = param_grads(model, F.cross_entropy(policy(model(x), y), y, reduction="sum"))
    want = param_grads(model, F.cross_entropy(model(x), y, weight=w, reduction="sum"))
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


# ---------------------------------------------------------------------------- clipping


def clip_reference(g: torch.Tensor, max_norm: float, dims) -> torch.Tensor:
    norm = g.square().sum(dim=dims, keepdim=True).sqrt()
    factor = torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm))
    return g * factor


@pytest.mark.parametrize(
    ("policy", "dims"), [(lg.clip_per_class(0.3), (0, 2, 3)), (lg.clip_per_sample(0.3), (1, 2, 3))]
)
def test_clipping_matches_formula(policy, dims):
    torch.manual_seed(0)
    z = torch.randn(4, 3, 2, 2, requires_grad=True)  # (N, C, H, W)
    upstream = torch.randn(4, 3, 2, 2)
    upstream[0] *= 1e-3  # some groups below the threshold
    (g,) = torch.autograd.grad(policy(z), z, upstream)
    torch.testing.assert_close(g, clip_reference(upstream, 0.3, dims), **TOL)
    assert torch.all(g.square().sum(dim=dims).sqrt() <= 0.3 + 1e-12)


# ------------------------------------------------------------------------------ EQLv2


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


def test_stateful_state_dict_round_trip_continues_identically():
    model = make_model(c=5)
    a = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=5), lg.monitor(num_classes=5, history=4))
    g = torch.Generator().manual_seed(4)
    batches = [
        (torch.randn(8, 6, generator=g), torch.randint(-1, 2, (8, 5), generator=g))
        for _ in range(6)
    ]
    for x, y in batches[:3]:
        param_grads(model, bce_entries(a(model(x), y), y).sum())
    b = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=5), lg.monitor(num_classes=5, history=4))
    b.load_state_dict(a.state_dict())
    for x, y in batches[3:]:
        ga = param_grads(model, bce_entries(a(model(x), y), y).sum())
        gb = param_grads(model, bce_entries(b(model(x), y), y).sum())
        for u, v in zip(ga, gb):
            assert torch.equal(u, v)
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(u, v), k
    assert {"policies.1.pos_grad", "policies.2.history"} <= set(a.state_dict())


def test_reset_restores_initial_statistics():
    policy = lg.eqlv2(num_classes=3)
    z = torch.zeros(2, 3, requires_grad=True)
    policy(z, torch.tensor([0, 1])).sum().backward()
    assert policy.num_updates.item() == 1
    policy.reset()
    assert torch.equal(policy.pos_grad, torch.zeros(3)) and policy.num_updates.item() == 0


def test_no_state_update_keeps_statistics():
    policy = lg.chain(lg.eqlv2(num_classes=3), lg.monitor(3))
    z = torch.zeros(2, 3, requires_grad=True)
    with lg.no_state_update():
        policy(z, torch.tensor([0, 1])).sum().backward()
    assert all(torch.equal(v, torch.zeros_like(v)) for v in policy.state_dict().values())


# ------------------------------------------------------------------------------ monitor


def test_monitor_changes_nothing_and_records_reference_statistics(multilabel_batch):
    x, y = multilabel_batch
    model = make_model()
    mon = lg.monitor(num_classes=4, history=2)
    z = model(x)
    upstreams = []
    for _ in range(3):
        z_in = z.detach().requires_grad_()
        up = torch.randn_like(z)
        upstreams.append(up)
        (g,) = torch.autograd.grad(mon(z_in, y), z_in, up)
        assert torch.equal(g, up)
    sq = sum(u.float().square().sum(0) for u in upstreams)
    torch.testing.assert_close(mon.sq_norm, sq)
    torch.testing.assert_close(mon.last_norm, upstreams[-1].float().norm(dim=0))
    pos = sum((u.float().abs() * (y == 1)).sum(0) for u in upstreams)
    torch.testing.assert_close(mon.pos_abs, pos)
    recent = mon.recent_norms()
    assert recent.shape == (2, 4)
    torch.testing.assert_close(recent[0], upstreams[1].float().norm(dim=0))
    torch.testing.assert_close(mon.mean_norm(), (sq / 3).sqrt())


# ------------------------------------------------------------------------------ schedule


def test_schedule_switches_at_start_and_end_step():
    policy = lg.schedule(lg.class_weights([3.0, 3.0]), start_step=2, end_step=4)
    seen = []
    for _ in range(5):
        z = torch.zeros(1, 2, requires_grad=True)
        policy(z, torch.tensor([0])).sum().backward()
        seen.append(z.grad[0, 0].item())
    assert seen == [1.0, 1.0, 3.0, 3.0, 1.0]
    restored = lg.schedule(lg.class_weights([3.0, 3.0]), start_step=2, end_step=4)
    restored.load_state_dict(policy.state_dict())
    assert restored.num_steps.item() == 5


# ------------------------------------------------------------------- gate: exactness


def test_identity_policy_passes_gradcheck():
    class Identity(lg.Policy):
        requires_targets = False

        def transform(self, grad, ctx):
            return grad

    z = torch.randn(3, 4, 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: Identity()(t), (z,))
    assert torch.autograd.gradgradcheck(lambda t: Identity()(t) ** 2, (z,))


def test_backward_equals_declared_transform_of_upstream():
    torch.manual_seed(0)
    z = torch.randn(5, 3, requires_grad=True)
    y = torch.randint(0, 2, (5, 3))
    w = torch.tensor([0.5, 1.0, 2.0])
    up = torch.randn(5, 3)
    (g,) = torch.autograd.grad(lg.class_weights(w)(z, y), z, up)
    assert torch.equal(g, up * w)


def test_forward_returns_logits_unchanged():
    z = torch.randn(4, 3, requires_grad=True)
    out = lg.chain(lg.mask_unknown(), lg.clip_per_class(0.1))(z, torch.tensor([0, 1, 2, -100]))
    assert torch.equal(out, z)
    with torch.no_grad():
        assert lg.mask_unknown()(z, torch.tensor([0, 1, 2, 0])) is z


def test_vmap_grad_per_sample_gradients():
    from torch.func import functional_call, grad, vmap

    model = make_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    policy = lg.chain(lg.mask_unknown(), lg.class_weights([1.0, 2.0, 0.5, 0.0]))
    x = torch.randn(5, 6)
    y = torch.randint(-1, 2, (5, 4))

    def loss(p, xi, yi):
        z = policy(functional_call(model, p, (xi[None],)), yi[None])
        return bce_entries(z, yi[None]).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(5):
        ref = torch.autograd.grad(
            loss(dict(model.named_parameters()), x[i], y[i]), list(model.parameters())
        )
        torch.testing.assert_close(per_sample["2.weight"][i], ref[2], **TOL)


def test_batched_vjp_through_gate_is_exact():
    model = make_model()
    x = torch.randn(6, 6)
    y = torch.randint(-1, 2, (6, 4))
    policy = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=4))
    losses = bce_entries(policy(model(x), y), y).sum(0)
    weight = model[0].weight
    with lg.no_state_update():
        jac = torch.autograd.grad(
            losses, weight, torch.eye(4), retain_graph=True, is_grads_batched=True
        )[0]
        loop = torch.stack(
            [torch.autograd.grad(losses[k], weight, retain_graph=True)[0] for k in range(4)]
        )
    torch.testing.assert_close(jac, loop, **TOL)


# ------------------------------------------------------------------- edge cases, errors


@pytest.mark.parametrize("targets", [torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)])
def test_empty_batch_gives_zero_gradient(targets):
    model = make_model()
    policy = lg.chain(
        lg.mask_unknown(),
        lg.class_weights(torch.ones(4)),
        lg.eqlv2(num_classes=4),
        lg.clip_per_class(1.0),
        lg.clip_per_sample(1.0),
        lg.monitor(4, history=2),
    )
    z = policy(model(torch.zeros(0, 6)), targets)
    grads = param_grads(model, z.sum())
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    assert all(torch.isfinite(v.float()).all() for v in policy.state_dict().values())


def test_all_masked_batch_gives_exact_zero_gradient():
    model = make_model()
    y = torch.full((5, 4), -1)
    policy = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=4), lg.clip_per_class(1.0))
    grads = param_grads(model, bce_entries(policy(model(torch.randn(5, 6)), y), y).sum())
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_non_finite_gradient_passes_through_and_spares_statistics():
    policy = lg.chain(lg.eqlv2(num_classes=3), lg.clip_per_class(1.0), lg.clip_per_sample(1.0))
    eq = policy.policies[0]
    z = torch.zeros(2, 3, requires_grad=True)
    up = torch.tensor([[float("inf"), 1.0, 1.0], [1.0, 1.0, 1.0]])
    (g,) = torch.autograd.grad(policy(z, torch.tensor([0, 1])), z, up)
    assert torch.isinf(g[0, 0])
    assert eq.num_updates.item() == 0 and torch.equal(eq.pos_grad, torch.zeros(3))


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


def test_user_policy_in_a_few_lines():
    class NegativesOnly(lg.Policy):
        def transform(self, grad, ctx):
            return torch.where(ctx.require_targets(self).positive, torch.zeros_like(grad), grad)

    z = torch.zeros(2, 3, requires_grad=True)
    NegativesOnly()(z, torch.tensor([0, 2])).sum().backward()
    assert z.grad.tolist() == [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
