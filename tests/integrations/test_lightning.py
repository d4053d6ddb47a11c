"""Lightning: the callback and apply_policy in a tiny LightningModule on CPU."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import labelgrad as lg

pl = pytest.importorskip("lightning.pytorch")
from labelgrad.integrations.lightning import LabelGradCallback, apply_policy  # noqa: E402

C = 4
F32 = torch.float32  # explicit: other test modules change the default dtype
os.environ.setdefault("PL_DISABLE_FORK", "1")


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16, dtype=F32), nn.ReLU(), nn.Linear(16, C, dtype=F32))


def make_policy() -> lg.Chain:
    return lg.chain(
        lg.mask_unknown(), lg.eqlv2(num_classes=C), lg.clip_per_class(0.05), lg.monitor(C)
    )


def dataset(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 6, generator=g, dtype=F32)
    y = torch.randint(-1, 2, (n, C), generator=g)
    return TensorDataset(x, y)


def loss_fn(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(z.float(), y.clamp(min=0).float()) * C


class Module(pl.LightningModule):
    def __init__(self, lr: float = 0.5, rows: bool = False) -> None:
        super().__init__()
        self.net = make_net()
        self.policy = make_policy()
        self.lr = lr
        self.rows = rows

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        return loss_fn(apply_policy(self, self.net(x), y), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.rows:
            return make_rows(opt, self.net)
        return opt


def make_rows(opt: torch.optim.Optimizer, net: nn.Module) -> lg.RowRules:
    return lg.RowRules(
        opt, rows=net[2], frozen=[3], lr_scale=[1.0, 2.0, 0.5, 1.0], skip_absent=True
    )


def trainer(**kwargs: object) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LabelGradCallback(encoding="multi_hot")],
        **kwargs,
    )


def loader(batch_size: int) -> DataLoader:
    return DataLoader(dataset(), batch_size=batch_size, shuffle=False)


def manual(micro: int, k: int, rows: bool = False) -> tuple[nn.Module, lg.Chain]:
    """The plain-PyTorch reference: k micro-batches of `micro` per step, one window per step."""
    net, policy = make_net(), make_policy()
    opt: torch.optim.Optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    if rows:
        opt = make_rows(opt, net)
    batches = list(loader(micro))
    for start in range(0, len(batches), k):
        with lg.accumulation_window(policy):
            for x, y in batches[start : start + k]:
                if rows:
                    opt.observe(y, encoding="multi_hot")
                (loss_fn(policy(net(x), y), y) / k).backward()
        opt.step()
        opt.zero_grad()
    return net, policy


def test_fast_dev_run_trains_and_updates_statistics() -> None:
    module = Module()
    before = copy.deepcopy(module.net.state_dict())
    trainer(fast_dev_run=True).fit(module, loader(8))
    assert module.policy.members()[1].num_updates.item() == 1
    assert not torch.equal(before["2.weight"], module.net[2].weight)


@pytest.mark.parametrize("rows", [False, True])
def test_accumulation_in_lightning_equals_manual_window(rows: bool) -> None:
    module = Module(rows=rows)
    trainer(max_epochs=1, accumulate_grad_batches=2).fit(module, loader(4))
    net, policy = manual(micro=4, k=2, rows=rows)
    if rows:  # class 3 frozen: bitwise unchanged
        assert torch.equal(module.net[2].weight[3], make_net()[2].weight[3])
    for a, b in zip(module.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    eql, ref = module.policy.members()[1], policy.members()[1]
    assert eql.num_updates.item() == 2  # two optimizer steps, not four micro-batches
    torch.testing.assert_close(eql.pos_grad, ref.pos_grad)
    torch.testing.assert_close(eql.neg_grad, ref.neg_grad)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision(precision: str) -> None:
    module = Module()
    if precision == "16-mixed":
        # Lightning maps "16-mixed" to bf16 on CPU; its plugin with a CPU GradScaler is real fp16.
        from lightning.pytorch.plugins.precision import MixedPrecision

        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
        t = trainer(fast_dev_run=2, plugins=[plugin])
    else:
        t = trainer(fast_dev_run=2, precision=precision)
    t.fit(module, loader(8))
    eql = module.policy.members()[1]
    assert eql.num_updates.item() == 2
    assert bool(torch.isfinite(eql.pos_grad).all())
    if precision == "16-mixed":
        assert scaler.get_scale() == 2.0**10  # no overflow, no skipped step
        assert all(
            p._grad_scaler is scaler for p in module.policy.modules() if isinstance(p, lg.Policy)
        )
    # Statistics of the unscaled gradient: close to a float32 run's.
    ref = Module()
    trainer(fast_dev_run=2).fit(ref, loader(8))
    ref_eql = ref.policy.members()[1]
    torch.testing.assert_close(eql.pos_grad, ref_eql.pos_grad, rtol=0.05, atol=1e-3)
    torch.testing.assert_close(eql.neg_grad, ref_eql.neg_grad, rtol=0.05, atol=1e-3)


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="callable"):
        LabelGradCallback(targets=3)  # type: ignore[arg-type]
    module = pl.LightningModule()
    with pytest.raises(ValueError, match="policy"):
        apply_policy(module, torch.zeros(1, 2), torch.tensor([0]))


class AggregatingModule(pl.LightningModule):
    """Manual optimisation: aggregation replaces backward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
        from labelgrad.integrations.lightning import aggregate_backward

        x, y = batch
        opt = self.optimizers()
        opt.zero_grad()
        features = self.net[:2](x)
        losses = lg.per_label_losses(self.net[2](features).float(), y.clamp(min=0))
        aggregate_backward(
            self,
            losses,
            aggregator=lg.aggregators.UPGrad(),
            shared=self.net[:2],
            engine="representation",
            features=features,
        )
        opt.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_aggregation_in_manual_optimisation_equals_plain_loop(precision: str) -> None:
    module = AggregatingModule()
    if precision == "16-mixed":  # real fp16 with a CPU GradScaler (see test_mixed_precision)
        from lightning.pytorch.plugins.precision import MixedPrecision

        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        t = trainer(max_epochs=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    else:
        t = trainer(max_epochs=1, precision=precision)
    t.fit(module, loader(8))
    if precision == "16-mixed":
        assert scaler.get_scale() == 2.0**10  # the losses were scaled, nothing overflowed
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for x, y in loader(8):
        opt.zero_grad()
        features = net[:2](x)
        losses = lg.per_label_losses(net[2](features), y.clamp(min=0))
        lg.aggregate_backward(
            losses,
            shared=net[:2],
            aggregator=lg.aggregators.UPGrad(),
            engine="representation",
            features=features,
        )
        opt.step()
    tol = 1e-5 if precision == "32-true" else 3e-2
    for a, b in zip(module.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
