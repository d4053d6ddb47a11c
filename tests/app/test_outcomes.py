"""The outcomes benchmark: metric functions against scikit-learn, goals logic, and a tiny run of
``labelgrad bench --outcomes`` that must produce every output file."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from labelgrad.app.bench.incremental import INCREMENTAL_METHODS  # noqa: E402
from labelgrad.app.bench.outcomes_lt import LT_PROTOCOL_METHODS  # noqa: E402
from labelgrad.app.bench.outcomes_setup import (  # noqa: E402
    CI_EXPERIMENT,
    PARTIAL_METHODS,
    SIZES,
    OutcomesResult,
    Record,
    goals,
)
from labelgrad.app.cli import main  # noqa: E402
from labelgrad.app.metrics import (  # noqa: E402
    average_precision,
    balanced_accuracy,
    f1_scores,
    mean_average_precision,
    shot_group_accuracy,
)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, size=200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 6, size=200))
    ours = balanced_accuracy(torch.from_numpy(pred), torch.from_numpy(y), 6)
    assert ours == pytest.approx(sklearn_metrics.balanced_accuracy_score(y, pred), abs=1e-12)


def test_balanced_accuracy_ignores_classes_absent_from_the_truth() -> None:
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 2])  # class 2 never true
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        ref = sklearn_metrics.balanced_accuracy_score(y, pred)
    assert balanced_accuracy(torch.from_numpy(pred), torch.from_numpy(y), 3) == pytest.approx(ref)


def test_shot_groups_match_sklearn_recall_by_hand() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=300)
    pred = np.where(rng.random(300) < 0.5, y, rng.integers(0, 5, size=300))
    counts = np.array([500, 101, 100, 20, 19])  # boundaries: 101 many, 100 and 20 medium, 19 few
    recall = sklearn_metrics.recall_score(y, pred, average=None)
    got = shot_group_accuracy(torch.from_numpy(recall), torch.from_numpy(counts))
    assert got["many"] == pytest.approx(recall[:2].mean())
    assert got["medium"] == pytest.approx(recall[2:4].mean())
    assert got["few"] == pytest.approx(recall[4])
    empty = shot_group_accuracy(torch.ones(2, dtype=torch.float64), torch.tensor([500, 300]))
    assert empty["many"] == 1.0 and math.isnan(empty["medium"]) and math.isnan(empty["few"])
    with pytest.raises(ValueError, match="train_counts"):
        shot_group_accuracy(torch.ones(3), torch.ones(2))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_average_precision_matches_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random((120, 7)) < rng.uniform(0.05, 0.6, size=7)).astype(np.int64)
    scores = rng.random((120, 7)) + 0.5 * y
    if ties:  # many equal scores: sklearn treats a run of equal scores as one threshold
        scores = np.round(scores * 4) / 4
    y[:, 3] = 0  # a label with no positive sample
    ours = average_precision(torch.from_numpy(scores), torch.from_numpy(y)).numpy()
    keep = y.sum(0) > 0
    ref = sklearn_metrics.average_precision_score(y[:, keep], scores[:, keep], average=None)
    np.testing.assert_allclose(ours[keep], ref, rtol=0, atol=1e-12)
    assert np.isnan(ours[3])
    assert mean_average_precision(torch.from_numpy(scores), torch.from_numpy(y)) == pytest.approx(
        float(np.mean(ref)), abs=1e-12
    )


def test_average_precision_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="scores and y"):
        average_precision(torch.zeros(3, 2), torch.zeros(3))


@pytest.mark.parametrize("seed", range(5))
def test_f1_scores_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random((80, 6)) < 0.3).astype(np.int64)
    pred = (rng.random((80, 6)) < 0.3).astype(np.int64)
    y[:, 0] = 0
    pred[:, 0] = 0  # no positive and no prediction: F1 undefined, 0 with zero_division=0
    pred[:, 1] = 0  # positives but no prediction
    macro, micro, per = f1_scores(torch.from_numpy(pred), torch.from_numpy(y))
    kw = {"zero_division": 0.0}
    assert macro == pytest.approx(sklearn_metrics.f1_score(y, pred, average="macro", **kw))
    assert micro == pytest.approx(sklearn_metrics.f1_score(y, pred, average="micro", **kw))
    np.testing.assert_allclose(
        per.numpy(), sklearn_metrics.f1_score(y, pred, average=None, **kw), atol=1e-12
    )
    with pytest.raises(ValueError, match="pred and y"):
        f1_scores(torch.zeros(2, 3), torch.zeros(3, 2))


def _record(experiment: str, method: str, metric: str, values: list[float]) -> Record:
    r = Record(experiment, method)
    for v in values:
        r.add({metric: v})
    return r


def test_goals_compare_the_best_labelgrad_recipe_with_plain_ce() -> None:
    exp = "digits-LT IF=100"
    recs = [
        _record(exp, "plain_ce", "balanced_acc", [0.60, 0.62]),
        _record(exp, "class_weights", "balanced_acc", [0.64, 0.66]),
        _record(exp, "eqlv2", "balanced_acc", [0.66, 0.68]),  # +6 points: the best
        _record(exp, "logit_adjusted", "balanced_acc", [0.90, 0.90]),  # a reference, not ours
        _record("Yeast, 50% hidden", "unknown_as_negative", "map", [0.40, 0.40]),
        _record("Yeast, 50% hidden", "mask_unknown", "map", [0.42, 0.42]),
    ]
    g = goals(OutcomesResult(recs, Path("."), "digits-LT", "tiny"))
    assert g["long_tail"]["best_method"] == "eqlv2"
    assert g["long_tail"]["gain_points"] == pytest.approx(6.0)
    assert g["long_tail"]["met"] is True
    assert g["partial"]["gain_points"] == pytest.approx(2.0)
    assert g["partial"]["met"] is False
    assert g["long_tail_reference"]["gain_points"] == pytest.approx(-23.0)
    assert g["long_tail_reference"]["met"] is False


def test_goals_take_the_best_partial_recipe_and_the_least_forgetting() -> None:
    hidden = "Yeast, 50% hidden"
    recs = [
        _record(hidden, "unknown_as_negative", "map", [0.40, 0.40]),
        _record(hidden, "mask_unknown", "map", [0.42, 0.42]),
        _record(hidden, "mask_unknown+asymmetric_focus", "map", [0.44, 0.45]),
        _record(CI_EXPERIMENT, "fine_tuning", "forgetting", [0.9, 0.9]),
        _record(CI_EXPERIMENT, "row_rules_frozen", "forgetting", [0.9, 0.9]),
        _record(CI_EXPERIMENT, "agem", "forgetting", [0.4, 0.5]),
    ]
    g = goals(OutcomesResult(recs, Path("."), "digits-LT", "tiny"))
    assert g["partial"]["best_method"] == "mask_unknown+asymmetric_focus"
    assert g["partial"]["gain_points"] == pytest.approx(4.5) and g["partial"]["met"] is True
    assert g["incremental"]["best_method"] == "agem"
    assert g["incremental"]["forgetting_ratio"] == pytest.approx(0.5)
    assert g["incremental"]["met"] is True


def test_bench_outcomes_quick_writes_every_output(tmp_path: Path) -> None:
    """``--quick`` runs the full pipeline (digits-LT, few epochs) and writes every output."""
    out = tmp_path / "outcomes"
    argv = ["bench", "--outcomes", "--quick", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    sizes = SIZES["quick"]
    with open(out / "outcomes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    methods = {(r["experiment"], r["method"]) for r in rows}
    for m in LT_PROTOCOL_METHODS:
        assert ("digits-LT IF=100", m) in methods and ("digits-LT IF=10", m) in methods
    for m in PARTIAL_METHODS:
        assert ("Yeast, 50% hidden", m) in methods
    for m in sizes.agg_methods:
        assert ("Yeast, label aggregation", m) in methods
    for r in rows:
        want = sizes.lt_seeds if r["experiment"].startswith("digits-LT") else sizes.seeds
        if r["experiment"] == CI_EXPERIMENT:
            want = sizes.ci_seeds
        assert int(r["seeds"]) == want, r
    payload = json.loads((out / "outcomes.json").read_text())
    assert payload["lt_source"] == "digits-LT" and payload["size"] == "quick"
    assert set(payload["goals"]) == {
        "long_tail",
        "long_tail_reference",
        "long_tail_beyond_loss",
        "long_tail_beyond_loss_if10",
        "partial",
        "incremental",
        "incremental_standard",
    }
    for m in INCREMENTAL_METHODS:
        assert (CI_EXPERIMENT, m) in methods
    ci = [r for r in payload["records"] if r["experiment"] == CI_EXPERIMENT]
    for rec in ci:
        assert 0.0 <= rec["average_acc"]["mean"] <= 1.0
        if rec["method"] == "joint":  # the ceiling: no sequence, so no forgetting
            assert rec["forgetting"]["mean"] is None and rec["learning_acc"]["mean"] is None
            continue
        assert -1.0 <= rec["forgetting"]["mean"] <= 1.0
        assert 0.0 <= rec["learning_acc"]["mean"] <= 1.0
    for rec in payload["records"]:
        if rec["experiment"].startswith("digits-LT"):
            acc = rec["balanced_acc"]
            assert len(acc["values"]) == sizes.lt_seeds and 0.0 <= acc["mean"] <= 1.0
            assert all(1 <= e <= sizes.lt_max_epochs for e in rec["epochs"]["values"])
    # The same tuning budget for every method: 3 weight decays, then 2 more knob values.
    for name, grid in payload["lt_grids"].items():
        method = name.split("/", 1)[1]
        assert len(grid) == (3 if method == "plain_ce" else 5), name
        chosen = payload["lt_configs"][name]
        best = max(grid, key=lambda g: g["val_balanced_acc"])
        assert {k: v for k, v in best.items() if k != "val_balanced_acc"} == chosen
    for name in payload["files"]:
        assert (out / name).stat().st_size > 0
    pngs = [n for n in payload["files"] if n.endswith(".png")]
    assert len(pngs) == 5
    for name in pngs:
        head = (out / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(head[16:20], "big") >= 1000  # IHDR width: readable figures
    md = (out / "results.md").read_text()
    assert "labelgrad bench --outcomes --quick" in md
    assert "## Goals" in md and "| plain_ce |" in md and "(lt_balanced_accuracy.png)" in md
    assert "## Tuning" in md and "weight_balancing" in md


def test_long_tail_falls_back_to_digits_without_fashion_mnist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import labelgrad.app.datasets as datasets
    from labelgrad.app.bench.outcomes_lt import lt_data

    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)  # an empty folder
    data = lt_data(100.0, 0, SIZES["full"])
    assert data.source == "digits-LT" and data.x_train.shape[1:] == (1, 8, 8)
    full = datasets.digits_lt(100.0, seed=0)
    # Validation is carved from the training cut: together they are the cut, per class.
    together = torch.bincount(torch.cat([data.y_train, data.y_val]), minlength=10)
    assert together.tolist() == full.train_counts().tolist()
    assert torch.equal(data.y_test, full.y_test)


def test_fashion_lt_keeps_the_training_cut_and_adds_a_balanced_validation_split() -> None:
    from labelgrad.app.bench.outcomes_lt import lt_data
    from labelgrad.app.datasets import MissingSourceError, fashion_mnist_lt

    try:
        ref = fashion_mnist_lt(100.0, seed=1, n_max=500, test_per_class=20)
    except MissingSourceError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    sizes = dataclasses.replace(SIZES["full"], lt_test_per_class=20)
    data = lt_data(100.0, 1, sizes)
    assert data.source == "Fashion-MNIST-LT"
    torch.testing.assert_close(data.x_train.flatten(1), ref.x_train)
    assert torch.equal(data.y_train, ref.y_train) and torch.equal(data.y_test, ref.y_test)
    assert torch.bincount(data.y_val).tolist() == [sizes.lt_val_per_class] * 10
    # No validation image is a training image (rows compared exactly).
    train_rows = {bytes(r.numpy().tobytes()) for r in data.x_train.flatten(1)}
    shared = sum(bytes(r.numpy().tobytes()) in train_rows for r in data.x_val.flatten(1))
    assert shared == 0


def test_plateau_rule_stops_after_patience_and_keeps_the_best_epoch() -> None:
    from torch import nn

    from labelgrad.app.bench.outcomes_lt import _fit

    module = nn.Linear(1, 1, bias=False)
    scores = iter([0.1, 0.5, 0.4, 0.5, 0.3, 0.9])  # best at epoch 2; 3 epochs without better

    def step(idx: torch.Tensor) -> None:
        with torch.no_grad():
            module.weight += 1.0 / 4  # 4 batches of 1: +1 per epoch

    w0 = float(module.weight.detach())
    fit = _fit(module, step, 4, 1, 0, lambda: next(scores), max_epochs=10, patience=3)
    assert (fit.best_epoch, fit.epochs, fit.val) == (2, 5, 0.5)
    assert float(module.weight.detach()) == pytest.approx(w0 + 2.0)  # the weights of epoch 2
    capped = _fit(module, step, 4, 1, 0, iter([0.1, 0.2, 0.3]).__next__, 3, 2)
    assert (capped.best_epoch, capped.epochs) == (3, 3)


def test_coordinate_search_visits_the_same_budget_and_picks_the_best() -> None:
    from labelgrad.app.bench.outcomes_lt import _tune

    sizes = SIZES["full"]

    class Fake:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float, float | None]] = []

        def val_score(self, method: str, wd: float, knob: float | None, seed: int) -> float:
            assert seed == 0
            self.calls.append((method, wd, knob))
            return -abs(wd - 0.1) - abs((knob or 0) - 0.5)  # best: wd 0.1, knob 0.5

    fake = Fake()
    best, scored = _tune("weight_balancing", fake, sizes)  # type: ignore[arg-type]
    mid = sizes.lt_radii[1]
    want = [(wd, mid) for wd in sizes.lt_weight_decays]
    want += [(0.1, k) for k in sizes.lt_radii if k != mid]
    assert [(w, k) for _, w, k in fake.calls] == want
    assert best == (0.1, 0.5) and len(scored) == 5
    fake = Fake()
    best, scored = _tune("plain_ce", fake, sizes)  # type: ignore[arg-type]
    assert best == (0.1, None) and len(scored) == 3


def test_forgetting_is_chaudhry_2018_against_a_direct_loop() -> None:
    from labelgrad.app.bench.incremental import forgetting

    gen = torch.Generator().manual_seed(0)
    for t in (2, 3, 5):
        acc = torch.rand(t, t, generator=gen, dtype=torch.float64)
        acc[0, 1] = 0.99  # task 1 not learnt yet after task 0: never a previous best
        want = sum(
            max(float(acc[k, s]) for k in range(s, t - 1)) - float(acc[t - 1, s])
            for s in range(t - 1)
        ) / (t - 1)
        assert float(forgetting(acc)) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="acc must be"):
        forgetting(torch.zeros(1, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_labels_trick_is_cross_entropy_over_the_present_classes(dtype: torch.dtype) -> None:
    """Against autograd of the published loss: CE with the absent classes' logits at -inf."""
    import torch.nn.functional as F

    import labelgrad as lg

    gen = torch.Generator().manual_seed(0)
    for n, c, classes in ((8, 10, (2, 3)), (5, 4, (0,)), (16, 12, (1, 5, 11)), (3, 2, (0, 1))):
        z = (6 * torch.randn(n, c, generator=gen)).to(dtype).requires_grad_()
        pick = torch.randint(0, len(classes), (n,), generator=gen)
        y = torch.tensor(classes)[pick]
        y[0] = -100  # an ignored sample: zero gradient
        w = torch.rand(c, generator=gen).to(dtype) + 0.5  # class weights: a per-sample scale
        (ours,) = torch.autograd.grad(F.cross_entropy(lg.labels_trick()(z, y), y, weight=w), z)
        absent = ~torch.isin(torch.arange(c), y[y >= 0])
        ref_loss = F.cross_entropy(z.masked_fill(absent, float("-inf")), y, weight=w)
        (ref,) = torch.autograd.grad(ref_loss, z)
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
        assert torch.all(ours[:, absent] == 0) and torch.all(ours[0] == 0)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_reservoir_is_algorithm_r_one_image_at_a_time(batch: int) -> None:
    """Against a direct loop of Vitter's algorithm R fed the same random draws."""
    from labelgrad.app.bench.incremental import Reservoir

    size, n = 10, 300
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(n)
    mem = Reservoir(size, 1, seed=3)
    gen = torch.Generator().manual_seed(3)
    ref: list[int] = []
    for start in range(0, n, batch):
        mem.add(x[start : start + batch], y[start : start + batch])
        draws = torch.rand(len(y[start : start + batch]), generator=gen)
        for i, u in zip(range(start, min(start + batch, n)), draws.tolist(), strict=True):
            if i < size:
                ref.append(i)
            elif (j := int(u * (i + 1))) < size:
                ref[j] = i
    assert mem.y.tolist() == ref and mem.x.squeeze(1).long().tolist() == ref
    assert len(mem) == size and mem.seen == n
    sx, sy = mem.sample(4)
    assert len(sy) == 4 and set(sy.tolist()) <= set(ref) and torch.equal(sx.squeeze(1).long(), sy)


def test_reservoir_keeps_a_uniform_sample_of_the_stream() -> None:
    from labelgrad.app.bench.incremental import Reservoir

    hits = torch.zeros(100)
    for seed in range(400):
        mem = Reservoir(10, 1, seed=seed)
        mem.add(torch.zeros(100, 1), torch.arange(100))
        hits[mem.y] += 1
    # Each image is kept with probability 10/100: 40 of 400 runs, binomial sd 6.
    assert hits.sum() == 4000 and hits.min() >= 15 and hits.max() <= 65
    assert abs(float(hits[:50].sum() - hits[50:].sum())) < 300  # early vs late halves


def test_weight_align_scales_new_rows_to_the_old_mean_norm() -> None:
    import labelgrad as lg

    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(5, 6)
    with torch.no_grad():
        head.weight.copy_(torch.randn(6, 5, generator=gen))
        head.weight[4:] *= 3
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    lg.rows.align_weights(head, [4, 5], [0, 1, 2, 3], inplace=True)  # what +wa runs
    gamma = w[:4].norm(dim=1).mean() / w[4:].norm(dim=1).mean()
    torch.testing.assert_close(head.weight[4:], w[4:] * gamma)
    assert torch.equal(head.weight[:4], w[:4]) and torch.equal(head.bias, b)
    torch.testing.assert_close(head.weight[4:].norm(dim=1).mean(), w[:4].norm(dim=1).mean())


def test_max_norm_rows_is_adamw_then_a_projection_of_each_weight_row() -> None:
    import copy

    from labelgrad.app.recipes import max_norm_rows

    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(4, 5)
    with torch.no_grad():
        head.weight.copy_(
            torch.randn(5, 4, generator=gen) * torch.tensor([[0.1], [3], [0.2], [5], [1]])
        )
    ref = copy.deepcopy(head)
    opt = max_norm_rows(
        torch.optim.AdamW(head.parameters(), lr=0.01), head, weight_decay=0.3, max_norm=1.0
    )
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.3)
    x, y = torch.randn(8, 4, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    for _ in range(3):
        for m, o in ((head, opt), (ref, ref_opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
        with torch.no_grad():  # the reference projection: rows outside the ball onto it
            n = ref.weight.norm(dim=1, keepdim=True)
            ref.weight.copy_(torch.where(n > 1.0, ref.weight / n, ref.weight))
    torch.testing.assert_close(head.weight, ref.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.bias, ref.bias, rtol=1e-5, atol=1e-6)
    assert float(head.weight.detach().norm(dim=1).max()) <= 1.0 + 1e-6


def test_tau_normalized_divides_each_row_by_its_norm_to_the_power() -> None:
    import labelgrad as lg
    from labelgrad.app.recipes import weight_balancing_stage2

    head = torch.nn.Linear(3, 4)
    for tau in (0.0, 0.5, 1.0):  # what tau_norm runs
        out = lg.rows.tau_normalize(head, tau)
        want = head.weight / head.weight.norm(dim=1, keepdim=True) ** tau
        torch.testing.assert_close(out.weight, want)
        assert torch.equal(out.bias, head.bias) and out is not head
    with pytest.raises(ValueError, match="loss must be"):
        weight_balancing_stage2(
            head, torch.ones(4), lr=0.1, weight_decay=0.0, max_norm=1.0, loss="focal"
        )


def test_goals_beyond_a_loss_and_the_standard_incremental_goal() -> None:
    recs = [
        _record("F IF=100", "logit_adjusted", "balanced_acc", [0.70, 0.72]),
        _record("F IF=100", "weight_balancing", "balanced_acc", [0.72, 0.73]),  # +1.5
        _record("F IF=100", "tau_norm", "balanced_acc", [0.60, 0.60]),
        _record("F IF=10", "logit_adjusted", "balanced_acc", [0.80, 0.80]),
        _record("F IF=10", "tau_norm", "balanced_acc", [0.81, 0.81]),  # +1.0
    ]
    for method, values in (
        ("er_ace", {"average_acc": 0.92, "forgetting": 0.04, "learning_acc": 0.96}),
        ("er", {"average_acc": 0.95, "forgetting": 0.06, "learning_acc": 0.99}),
        ("joint", {"average_acc": 0.97, "forgetting": math.nan, "learning_acc": math.nan}),
    ):
        r = Record(CI_EXPERIMENT, method)
        r.add(values)
        recs.append(r)
    g = goals(OutcomesResult(recs, Path("."), "F", "quick"))
    b = g["long_tail_beyond_loss"]
    assert b["best_method"] == "weight_balancing" and b["gain_points"] == pytest.approx(1.5)
    assert b["met"] is False and b["need_points"] == 2.0
    b10 = g["long_tail_beyond_loss_if10"]
    assert b10["best_method"] == "tau_norm" and b10["gain_points"] == pytest.approx(1.0)
    assert b10["met"] is True
    ci = g["incremental_standard"]
    assert ci["best_method"] == "er_ace" and ci["met"] is True  # er misses forgetting
    assert ci["joint_average_acc"] == pytest.approx(0.97)
    only_forgetting = [_record(CI_EXPERIMENT, "agem", "forgetting", [0.0])]
    g = goals(OutcomesResult(only_forgetting, Path("."), "F", "quick"))
    assert g["incremental_standard"]["met"] is False  # unmeasured metrics never meet a goal
