"""labelgrad under torch.distributed (gloo, CPU, 2 local processes).

A 2-rank DDP run must equal one process on the concatenated batch: stateful policies reduce their
statistics over ranks, and norm thresholds and statistics refer to the gradient DDP applies (the
average over ranks). Ranks whose statistics cannot be reduced fail fast, with the same error on
every rank, instead of hanging.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg
from _multiproc import run_ranks

C = 5
STEPS = 3
GLOBAL_BATCH = 8


def make_model() -> nn.Module:
    torch.manual_seed(0)
    f32 = torch.float32  # explicit: other test modules may change the default dtype
    return nn.Sequential(nn.Linear(6, 8, dtype=f32), nn.Tanh(), nn.Linear(8, C, dtype=f32))


def make_policy() -> lg.Chain:
    return lg.chain(
        lg.mask_unknown(),
        lg.eqlv2(num_classes=C),
        lg.clip_per_sample(0.02),
        lg.clip_per_class(0.03),
        lg.monitor(num_classes=C, history=4),
    )


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float32)
        y = torch.randint(0, 2, (GLOBAL_BATCH, C), generator=g)
        y[
            torch.rand(GLOBAL_BATCH, C, generator=g, dtype=torch.float32) < 0.15
        ] = -1  # partial labels
        out.append((x, y))
    return out


def train(model: nn.Module, policy: lg.Chain, part: slice) -> list[torch.Tensor]:
    """SGD steps on ``part`` of every global batch; returns EQLv2's weights at every step."""
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    eql = policy.members()[1]
    assert isinstance(eql, lg.EQLv2)
    seen = []
    for x, y in make_batches():
        x, y = x[part], y[part]
        seen.append(torch.stack(eql.weights()))
        z = policy(model(x), y)
        loss = F.binary_cross_entropy_with_logits(z, y.clamp(min=0).float(), reduction="sum")
        (loss / y.numel()).backward()  # the local mean: DDP's average is then the global mean
        opt.step()
        opt.zero_grad()
    return seen


# Level 2: class 0 frozen, class 4 absent everywhere, classes 2 and 3 present on one rank only.
ROW_LABELS = torch.tensor([1, 2, 2, 1, 3, 3, 1, 1])


# Per-class MaxNorm: the frozen class 0 and the absent class 4 sit outside their balls.
MAX_NORM = torch.tensor([0.05, 0.3, 0.2, 0.3, 0.05], dtype=torch.float64)


def train_rows(
    model: nn.Module, part: slice, steps: int = 3, max_norm: torch.Tensor | None = None
) -> lg.RowRules:
    head = model.module[2] if hasattr(model, "module") else model[2]
    opt = lg.RowRules(
        torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1),
        rows=head,
        frozen=[0],
        lr_scale=torch.tensor([1.0, 1.0, 0.5, 2.0, 1.0]),
        skip_absent=True,
        max_norm=max_norm,
    )
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        x = torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float32)[part]
        y = ROW_LABELS[part]
        F.cross_entropy(model(x), y).backward()
        opt.step(targets=y)
        opt.zero_grad()
    return opt


# Level 3: UPGrad over the labels, representation engine, Gramian synchronised over ranks.
class TrunkHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(6, 8, dtype=torch.float32), nn.Tanh())
        self.head = nn.Linear(8, C, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return features, self.head(features)


def train_aggregation(model: nn.Module, trunk: nn.Module, part: slice) -> list[torch.Tensor]:
    from labelgrad.integrations.distributed import synchronized

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    aggregator = synchronized(lg.aggregators.UPGrad())
    g = torch.Generator().manual_seed(7)
    weights = []
    for _ in range(3):
        x = torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float32)[part]
        y = torch.randint(0, 2, (GLOBAL_BATCH, C), generator=g)[part]
        features, logits = model(x)
        losses = lg.per_label_losses(logits, y, loss="bce")
        out = lg.aggregate_backward(
            losses, shared=trunk, aggregator=aggregator, engine="representation", features=features
        )
        weights.append(out.weights.detach())
        opt.step()
        opt.zero_grad()
    return weights


def _ddp_worker(rank: int, world: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model()
    ddp = DDP(model)
    policy = make_policy()
    n = GLOBAL_BATCH // world
    part = slice(rank * n, (rank + 1) * n)
    seen = train(ddp, policy, part)

    row_model = make_model()
    row_opt = train_rows(DDP(row_model), part)
    norm_model = make_model()
    train_rows(DDP(norm_model), part, max_norm=MAX_NORM)

    agg_model = TrunkHead()
    agg_weights = train_aggregation(DDP(agg_model), agg_model.trunk, part)

    # Bad input: statistics of different sizes on different ranks.
    errors = []
    bad = lg.eqlv2(num_classes=3 + rank)
    z = torch.zeros(2, 3 + rank, requires_grad=True)
    try:
        bad(z, torch.tensor([0, 1])).sum().backward()
    except ValueError as e:
        errors.append(str(e))
    clip = lg.clip_per_class(1.0)
    z = torch.zeros(2, 3 + rank, requires_grad=True)
    try:
        clip(z).sum().backward()
    except ValueError as e:
        errors.append(str(e))
    _fsdp_worker(rank, world, out)
    torch.save(
        {
            "params": [p.detach() for p in model.parameters()],
            "state": policy.state_dict(),
            "seen": seen,
            "errors": errors,
            "row_params": [p.detach() for p in row_model.parameters()],
            "row_state": row_opt.state_dict()["state"],
            "norm_params": [p.detach() for p in norm_model.parameters()],
            "agg_params": [p.detach() for p in agg_model.parameters()],
            "agg_weights": agg_weights,
        },
        Path(out) / f"rank{rank}.pt",
    )


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    run_ranks(_ddp_worker, str(out), world_size=2, timeout=150)
    results = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    for r, res in enumerate(results):
        res["fsdp"] = torch.load(out / f"fsdp{r}.pt")
    return results


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    model = make_model()
    policy = make_policy()
    seen = train(model, policy, slice(None))
    row_model = make_model()
    row_opt = train_rows(row_model, slice(None))
    norm_model = make_model()
    train_rows(norm_model, slice(None), max_norm=MAX_NORM)
    agg_model = TrunkHead()
    agg_weights = train_aggregation(agg_model, agg_model.trunk, slice(None))
    return {
        "agg_params": [p.detach() for p in agg_model.parameters()],
        "agg_weights": agg_weights,
        "params": list(model.parameters()),
        "state": policy.state_dict(),
        "seen": seen,
        "row_params": [p.detach() for p in row_model.parameters()],
        "row_state": row_opt.state_dict()["state"],
        "norm_params": [p.detach() for p in norm_model.parameters()],
    }


@pytest.mark.timeout(200)
def test_ddp_policies_equal_one_process_on_concatenated_batch(
    ddp_results: list[dict[str, Any]], reference: dict[str, Any]
) -> None:
    for res in ddp_results:
        for p, q in zip(res["params"], reference["params"], strict=True):
            torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)
        for key, ref in reference["state"].items():
            torch.testing.assert_close(res["state"][key], ref, rtol=1e-5, atol=1e-7, msg=key)
        for w, ref in zip(res["seen"], reference["seen"], strict=True):
            torch.testing.assert_close(w, ref, rtol=1e-5, atol=1e-6)
    # Statistics were really collected (and every rank applied the same weights, bit for bit).
    assert reference["state"]["policies.1.num_updates"] == STEPS
    assert not torch.equal(reference["seen"][-1], torch.ones_like(reference["seen"][-1]))
    for a, b in zip(ddp_results[0]["seen"], ddp_results[1]["seen"], strict=True):
        assert torch.equal(a, b)


@pytest.mark.timeout(200)
def test_ddp_row_rules_equal_one_process_on_concatenated_batch(
    ddp_results: list[dict[str, Any]], reference: dict[str, Any]
) -> None:
    init = make_model()
    for res in ddp_results:
        for p, q in zip(res["row_params"], reference["row_params"], strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for i, st in reference["row_state"].items():
            for k, v in st.items():
                torch.testing.assert_close(res["row_state"][i][k], v, rtol=1e-5, atol=1e-7)
        head_w = res["row_params"][2]
        # Frozen class 0 and globally absent class 4: bitwise unchanged on every rank.
        assert torch.equal(head_w[0], init[2].weight[0].detach())
        assert torch.equal(head_w[4], init[2].weight[4].detach())
        # Class 3 is present on rank 1 only, yet moved on both ranks (union of present classes).
        assert not torch.equal(head_w[3], init[2].weight[3].detach())
    for p, q in zip(ddp_results[0]["row_params"], ddp_results[1]["row_params"], strict=True):
        assert torch.equal(p, q)


@pytest.mark.timeout(200)
def test_ddp_row_rules_max_norm_equal_one_process_on_concatenated_batch(
    ddp_results: list[dict[str, Any]], reference: dict[str, Any]
) -> None:
    init = make_model()[2].weight.detach()
    ref_w = reference["norm_params"][2]
    # Rows 1-3 moved and were projected; frozen row 0 and absent row 4 kept their bits although
    # they lie outside their balls.
    assert torch.allclose(ref_w[1:4].double().norm(dim=1), MAX_NORM[1:4], rtol=1e-6)
    assert (init[[0, 4]].double().norm(dim=1) > MAX_NORM[[0, 4]]).all()
    for res in ddp_results:
        for p, q in zip(res["norm_params"], reference["norm_params"], strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert torch.equal(res["norm_params"][2][[0, 4]], init[[0, 4]])
    for p, q in zip(ddp_results[0]["norm_params"], ddp_results[1]["norm_params"], strict=True):
        assert torch.equal(p, q)


@pytest.mark.timeout(200)
def test_ddp_aggregation_equals_one_process_on_concatenated_batch(
    ddp_results: list[dict[str, Any]], reference: dict[str, Any]
) -> None:
    for res in ddp_results:
        for w, ref in zip(res["agg_weights"], reference["agg_weights"], strict=True):
            torch.testing.assert_close(w, ref, rtol=1e-4, atol=1e-6)
        for p, q in zip(res["agg_params"], reference["agg_params"], strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # UPGrad did something other than the mean here (the test is not vacuous).
    assert not torch.allclose(reference["agg_weights"][0], torch.full((C,), 1.0 / C))
    for a, b in zip(ddp_results[0]["agg_weights"], ddp_results[1]["agg_weights"], strict=True):
        assert torch.equal(a, b)


@pytest.mark.timeout(200)
def test_ddp_unreducible_statistics_fail_fast_on_every_rank(
    ddp_results: list[dict[str, Any]],
) -> None:
    for res in ddp_results:
        assert len(res["errors"]) == 2
        assert "EQLv2" in res["errors"][0]
        assert "ClipPerClass" in res["errors"][1]
        for msg in res["errors"]:
            assert "different shapes" in msg


def test_gradient_world_size_without_process_group() -> None:
    from labelgrad._distributed import CheckedReducer, gradient_world_size

    assert gradient_world_size() == 1
    x = torch.arange(3.0)
    assert CheckedReducer("x").sum(x)[0] is x


# FSDP2: row rules on sharded parameters (the head's rows are split across the two ranks).
FSDP_CASES = ("sgd_skip_absent", "adamw_fast", "frozen_only")


def _fsdp_opt(model: nn.Module, case: str) -> lg.RowRules:
    head = model[2]
    if case == "sgd_skip_absent":
        base: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return lg.RowRules(
            base, rows=head, frozen=[0], lr_scale=[1.0, 1.0, 0.5, 2.0, 1.0], skip_absent=True
        )
    if case == "adamw_fast":
        base = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
        return lg.RowRules(
            base, rows=head, frozen=[4], weight_decay=[0.0, 0.1, 0.2, 0.0, 0.3], skip_absent=True
        )
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    return lg.RowRules(base, rows=head, frozen=[0, 3])


def train_fsdp_case(model: nn.Module, case: str, part: slice) -> None:
    opt = _fsdp_opt(model, case)
    policy = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=C))
    g = torch.Generator().manual_seed(6)
    for _ in range(3):
        x = torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float32)[part]
        y = ROW_LABELS[part]
        F.cross_entropy(policy(model(x), y), y).backward()
        opt.step(targets=y)
        opt.zero_grad()


def _fsdp_worker(rank: int, world: int, out: str) -> None:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard

    n = GLOBAL_BATCH // world
    result = {}
    for case in FSDP_CASES:
        model = make_model()
        fully_shard(model[2])
        fully_shard(model)
        assert model[2].weight.to_local().shape[0] < C  # the rows are really split
        train_fsdp_case(model, case, slice(rank * n, (rank + 1) * n))
        result[case] = [p.full_tensor().detach() for p in model.parameters()]
    torch.save(result, Path(out) / f"fsdp{rank}.pt")


@pytest.mark.timeout(200)
def test_fsdp2_row_rules_on_sharded_rows_equal_one_process(  # the ranks ran in ddp_results
    ddp_results: list[dict[str, Any]],
) -> None:
    results = [res["fsdp"] for res in ddp_results]
    init = make_model()
    for case in FSDP_CASES:
        model = make_model()
        train_fsdp_case(model, case, slice(None))
        for res in results:
            for p, q in zip(res[case], model.parameters(), strict=True):
                torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6, msg=case)
        frozen = {"sgd_skip_absent": [0, 4], "adamw_fast": [4, 0], "frozen_only": [0, 3]}[case]
        for c in frozen:  # frozen or absent rows, on both shards: bitwise unchanged
            assert torch.equal(results[0][case][2][c], init[2].weight[c].detach()), (case, c)


def test_synchronized_bad_input_and_single_process() -> None:
    from labelgrad.integrations.distributed import all_reduce_gradients, synchronized

    with pytest.raises(TypeError, match="weights"):
        synchronized(object())
    with pytest.raises(TypeError, match="Jacobian"):
        synchronized(lg.aggregators.ConFIG())
    g = torch.tensor([[2.0, -1.0], [-1.0, 1.0]])
    inner = lg.aggregators.UPGrad()
    assert torch.equal(synchronized(inner).weights(g), inner.weights(g))
    p = nn.Parameter(torch.ones(2))
    all_reduce_gradients([p])  # no gradient, no process group: nothing to do
    assert p.grad is None
