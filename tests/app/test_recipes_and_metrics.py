"""One recipe module and one metrics module for the demo, the outcomes benchmark and ``train``:
the constants are defined once, and the multi-label metrics leave unknown labels out exactly as
scikit-learn does on the known entries only."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from labelgrad.app import metrics, recipes

sklearn_metrics = pytest.importorskip("sklearn.metrics")

APP = Path(__file__).resolve().parents[2] / "src" / "labelgrad" / "app"


def test_constants_are_defined_only_in_the_recipe_and_metrics_modules() -> None:
    owned = {"BETA", "TAIL_LR_POWER", "LA_TAU", "DRW_FRACTION", "FEW_SHOT", "MANY_SHOT"}
    bad = []
    for path in APP.rglob("*.py"):
        if path.name in ("recipes.py", "metrics.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                bad += [f"{path.name}: {n}" for n in names & owned]
    assert not bad, bad


def test_demo_outcomes_and_train_share_one_definition() -> None:
    from labelgrad.app import demo, demo_runs, train
    from labelgrad.app.bench import outcomes, outcomes_report, outcomes_setup

    assert outcomes_report.BETA is recipes.BETA
    assert outcomes_setup.LT_METHODS is recipes.LONG_TAIL_METHODS
    assert set(demo.DIGITS_METHODS) <= set(recipes.LONG_TAIL_METHODS)
    assert demo.FEW_SHOT == outcomes_report.FEW_SHOT == metrics.FEW_SHOT
    assert train.multilabel_metrics is outcomes.multilabel_metrics is demo_runs.multilabel_metrics


def test_effective_number_weights_follow_the_paper() -> None:
    counts = torch.tensor([131, 20, 1])
    w = recipes.effective_number_weights(counts).double()
    beta = recipes.BETA
    ref = torch.tensor([(1 - beta) / (1 - beta**n) for n in (131, 20, 1)], dtype=torch.float64)
    torch.testing.assert_close(w, ref * 3 / ref.sum(), rtol=1e-6, atol=0)


def test_tail_lr_scale() -> None:
    got = recipes.tail_lr_scale(torch.tensor([400, 100, 0]), 0.5)
    assert got.tolist() == [1.0, 2.0, 20.0]  # an absent class counts as one image


@pytest.mark.parametrize("seed", range(4))
def test_multilabel_metrics_leave_unknowns_out_like_sklearn_on_known_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random((120, 5)) < 0.3).astype(np.int64)
    y[:, 0] = np.maximum(y[:, 0], (np.arange(120) < 3))  # a positive in every label
    scores = np.clip(y * 0.4 + rng.random((120, 5)) * 0.7, 0, 1)
    unknown = rng.random((120, 5)) < 0.25
    y_obs = np.where(unknown, -1, y)
    got, per = metrics.multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(y_obs))
    aps, f1s = [], []
    for k in range(5):
        keep = ~unknown[:, k]
        yt, sk = y[keep, k], scores[keep, k]
        f1s.append(sklearn_metrics.f1_score(yt, sk > 0.5, zero_division=0.0))
        if yt.sum():
            aps.append(sklearn_metrics.average_precision_score(yt, sk))
    np.testing.assert_allclose(per.numpy(), f1s, rtol=1e-12)
    assert got["macro_f1"] == pytest.approx(np.mean(f1s), abs=1e-12)
    assert got["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert got["worst_ap"] == pytest.approx(min(aps), abs=1e-12)
    pooled_t = np.concatenate([y[~unknown[:, k], k] for k in range(5)])
    pooled_p = np.concatenate([scores[~unknown[:, k], k] > 0.5 for k in range(5)])
    assert got["micro_f1"] == pytest.approx(sklearn_metrics.f1_score(pooled_t, pooled_p))


def test_multiclass_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 2 * np.eye(4)[y] * (rng.random(200) < 0.5)[:, None]
    got, recall = metrics.multiclass_metrics(torch.from_numpy(logits), torch.from_numpy(y), 4)
    pred = logits.argmax(1)
    assert got["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(
        sklearn_metrics.balanced_accuracy_score(y, pred)
    )
    np.testing.assert_allclose(recall.numpy(), sklearn_metrics.recall_score(y, pred, average=None))


def test_recipes_reject_unknown_methods() -> None:
    head = torch.nn.Linear(2, 3)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        recipes.long_tail_recipe("focal", head, opt, torch.ones(3), total_steps=1)
    with pytest.raises(ValueError, match="aggregator name"):
        recipes.multilabel_step("Tensor", head, opt, torch.ones(2, 3))


def test_demo_takeaways_call_a_gain_only_beyond_the_seed_spread() -> None:
    """Issue 23: the demo report called +0.2 points a gain with a standard deviation of 0.4."""
    import math

    from labelgrad.app.demo_tables import Row, difference, takeaways

    def row(exp: str, method: str, values: list[float]) -> Row:
        return Row(exp, method, {"balanced_acc": values}, [1.0])

    exp = "digits-LT IF=100"
    rows = [
        row(exp, "plain_ce", [0.800, 0.796, 0.804]),  # mean 80.0, std 0.4 points
        row(exp, "class_weights", [0.90, 0.91, 0.92]),
        row(exp, "row_rules", [0.802, 0.798, 0.806]),  # +0.2, within the spread
        row(exp, "plain_sigmoid", [0.70, 0.70, 0.70]),
        row(exp, "eqlv2", [0.60, 0.60, 0.60]),
    ]
    line = next(t for t in takeaways(rows) if t.startswith(exp))
    assert "row_rules +0.2 (within the seed spread of 0.6: no clear difference)" in line
    assert "class_weights +11.0 (a gain: more than the seed spread of 1.1)" in line
    assert "eqlv2 over a plain sigmoid classifier: -10.0 (a loss" in line
    # The spread is the combined standard deviation, an independent computation here.
    a, b = [0.5, 0.6, 0.7], [0.5, 0.5, 0.5]
    spread = 100 * math.sqrt(float(np.std(a, ddof=1)) ** 2 + float(np.std(b, ddof=1)) ** 2)
    assert (
        difference(a, b) == f"+10.0 (within the seed spread of {spread:.1f}: no clear difference)"
    )
    assert difference([0.6], [0.5]) == "+10.0 (one seed: no spread measured)"
