"""The outcomes benchmark: metric functions against scikit-learn, goals logic, and a tiny run of
``labelgrad bench --outcomes`` that must produce every output file."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from labelgrad.app.bench.incremental import INCREMENTAL_METHODS  # noqa: E402
from labelgrad.app.bench.outcomes_setup import (  # noqa: E402
    CI_EXPERIMENT,
    LT_METHODS,
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


def test_bench_outcomes_tiny_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "outcomes"
    argv = ["bench", "--outcomes", "--outcomes-size", "tiny", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    sizes = SIZES["tiny"]
    with open(out / "outcomes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    methods = {(r["experiment"], r["method"]) for r in rows}
    for m in LT_METHODS:
        assert ("digits-LT IF=100", m) in methods and ("digits-LT IF=10", m) in methods
    for m in PARTIAL_METHODS:
        assert ("Yeast, 50% hidden", m) in methods
    for m in sizes.agg_methods:
        assert ("Yeast, label aggregation", m) in methods
    assert all(int(r["seeds"]) == sizes.seeds for r in rows)
    payload = json.loads((out / "outcomes.json").read_text())
    assert payload["lt_source"] == "digits-LT" and payload["size"] == "tiny"
    assert set(payload["goals"]) == {"long_tail", "long_tail_reference", "partial", "incremental"}
    for m in INCREMENTAL_METHODS:
        assert (CI_EXPERIMENT, m) in methods
    ci = [r for r in payload["records"] if r["experiment"] == CI_EXPERIMENT]
    for rec in ci:
        assert 0.0 <= rec["average_acc"]["mean"] <= 1.0 and -1.0 <= rec["forgetting"]["mean"] <= 1.0
        assert 0.0 <= rec["learning_acc"]["mean"] <= 1.0
    for rec in payload["records"]:
        if rec["experiment"].startswith("digits-LT"):
            acc = rec["balanced_acc"]
            assert len(acc["values"]) == sizes.seeds and 0.0 <= acc["mean"] <= 1.0
    for name in payload["files"]:
        assert (out / name).stat().st_size > 0
    pngs = [n for n in payload["files"] if n.endswith(".png")]
    assert len(pngs) == 5
    for name in pngs:
        head = (out / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(head[16:20], "big") >= 1000  # IHDR width: readable figures
    md = (out / "results.md").read_text()
    assert "labelgrad bench --outcomes --outcomes-size tiny" in md
    assert "## Goals" in md and "| plain_ce |" in md and "(lt_balanced_accuracy.png)" in md


def test_long_tail_falls_back_to_digits_without_fashion_mnist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import labelgrad.app.datasets as datasets
    from labelgrad.app.bench.outcomes import _load_lt

    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)  # an empty folder
    ds, side, source = _load_lt(100.0, 0, SIZES["full"])
    assert (source, side) == ("digits-LT", 8) and ds.name == "digits-LT IF=100"
    assert ds.x_train.shape[1] == side * side


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

    from labelgrad.app.bench.incremental import LabelsTrick

    gen = torch.Generator().manual_seed(0)
    for n, c, classes in ((8, 10, (2, 3)), (5, 4, (0,)), (16, 12, (1, 5, 11)), (3, 2, (0, 1))):
        z = (6 * torch.randn(n, c, generator=gen)).to(dtype).requires_grad_()
        pick = torch.randint(0, len(classes), (n,), generator=gen)
        y = torch.tensor(classes)[pick]
        y[0] = -100  # an ignored sample: zero gradient
        w = torch.rand(c, generator=gen).to(dtype) + 0.5  # class weights: a per-sample scale
        (ours,) = torch.autograd.grad(F.cross_entropy(LabelsTrick()(z, y), y, weight=w), z)
        absent = ~torch.isin(torch.arange(c), y[y >= 0])
        ref_loss = F.cross_entropy(z.masked_fill(absent, float("-inf")), y, weight=w)
        (ref,) = torch.autograd.grad(ref_loss, z)
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
        assert torch.all(ours[:, absent] == 0) and torch.all(ours[0] == 0)


def test_labels_trick_passes_non_finite_gradients_through() -> None:
    from labelgrad.app.bench.incremental import LabelsTrick

    z = torch.zeros(2, 3, requires_grad=True)
    out = LabelsTrick()(z, torch.tensor([0, 1]))
    (g,) = torch.autograd.grad(out, z, torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert g[0].isnan().any() and torch.isfinite(g[1]).all()
