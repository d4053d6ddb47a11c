"""Hugging Face Trainer with a policy at the logits, on a tiny randomly initialised BERT.

Nothing is downloaded: the model is built from a config, the hub is switched offline.
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

import labelgrad as lg

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from labelgrad.integrations.transformers import LabelGradTrainer, policy_loss  # noqa: E402

C = 4
F32 = torch.float32  # explicit: other test modules change the default dtype


def tiny_bert(problem_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=C,
        problem_type=problem_type,
    )
    return transformers.BertForSequenceClassification(config).to(F32)


def rows(n: int, multi_label: bool) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(4)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 40, (6,), generator=g)
        if multi_label:
            label = torch.randint(0, 2, (C,), generator=g).to(F32)
        else:
            label = torch.randint(0, C, (), generator=g)
        out.append(
            {"input_ids": ids, "attention_mask": torch.ones(6, dtype=torch.long), "labels": label}
        )
    return out


def args(tmp_path: object, **kw: object) -> transformers.TrainingArguments:
    base = {
        "output_dir": str(tmp_path),
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "max_grad_norm": 0.0,
    }
    base.update(kw)
    return transformers.TrainingArguments(**base)


def make_policy() -> lg.Chain:
    return lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=C), lg.clip_per_sample(0.5))


def test_trainer_with_accumulation_equals_one_manual_batch(tmp_path: object) -> None:
    data = rows(8, multi_label=True)
    model = tiny_bert("multi_label_classification")
    ref_model = tiny_bert("multi_label_classification")
    policy, ref_policy = make_policy(), make_policy()

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    trainer = LabelGradTrainer(
        model=model,
        args=args(
            tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=1
        ),
        train_dataset=data,
        optimizers=(opt, sched),
        policy=policy,
    )
    trainer.train()

    # Reference: one batch of all 8 samples, plain PyTorch.
    batch = {k: torch.stack([r[k] for r in data]) for k in data[0]}
    labels = batch.pop("labels")
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.5)
    loss = policy_loss(ref_policy)(ref_model(**batch), labels, num_items_in_batch=labels.numel())
    loss.backward()
    ref_opt.step()

    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    eql, ref_eql = policy.members()[1], ref_policy.members()[1]
    assert eql.num_updates.item() == 1  # one optimizer step = one window
    torch.testing.assert_close(eql.pos_grad, ref_eql.pos_grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(eql.neg_grad, ref_eql.neg_grad, rtol=1e-4, atol=1e-7)


def test_class_index_labels_and_bf16(tmp_path: object) -> None:
    model = tiny_bert("single_label_classification")
    policy = lg.chain(lg.class_weights([1.0, 2.0, 0.5, 1.0]), lg.monitor(num_classes=C))
    trainer = LabelGradTrainer(
        model=model,
        args=args(tmp_path, per_device_train_batch_size=4, max_steps=2, bf16=True),
        train_dataset=rows(8, multi_label=False),
        policy=policy,
    )
    before = model.classifier.weight.detach().clone()
    trainer.train()
    mon = policy.members()[1]
    assert mon.num_batches.item() == 2
    assert bool(torch.isfinite(mon.sq_norm).all()) and bool((mon.sq_norm > 0).all())
    assert not torch.equal(before, model.classifier.weight)


def test_policy_loss_matches_weighted_cross_entropy() -> None:
    """class_weights + policy_loss equals CrossEntropyLoss(weight=w, reduction='sum') / N."""
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    z = torch.randn(5, C, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, -100])
    policy_loss(lg.class_weights(w))({"logits": z}, y).backward()
    z2 = z.detach().clone().requires_grad_()
    (torch.nn.functional.cross_entropy(z2, y, weight=w, reduction="sum") / 4).backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="Policy"):
        policy_loss(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss must be"):
        policy_loss(lg.mask_unknown(), loss="mse")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="logits"):
        policy_loss(lg.mask_unknown())({"x": 1}, torch.zeros(1))


def test_import_labelgrad_does_not_import_integrations() -> None:
    code = (
        "import sys, labelgrad; "
        "bad = [m for m in ('lightning', 'transformers', 'accelerate') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_trainer_with_row_rules(tmp_path: object) -> None:
    """Row rules through the optimizer: frozen class 0 and absent class 3 do not move."""
    model = tiny_bert("single_label_classification")
    data = [dict(r, labels=r["labels"].clamp(1, 2)) for r in rows(8, multi_label=False)]
    before = model.classifier.weight.detach().clone()
    trainer = LabelGradTrainer(
        model=model,
        args=args(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=0.05),
        train_dataset=data,
        policy=lg.mask_unknown(),
        row_rules=lambda opt: lg.RowRules(opt, rows=model.classifier, frozen=[0], skip_absent=True),
    )
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, lg.RowRules)  # inside accelerate's wrapper
    w = model.classifier.weight.detach()
    assert torch.equal(w[0], before[0])
    assert torch.equal(w[3], before[3])
    assert not torch.equal(w[1], before[1])
