"""The aggregators added for TorchJD 0.18 parity (Constant, Krum, TrimmedMean, ExcessMTL, CRMOGM,
MoDo, SDMGrad and PCD), together: finite results with their defaults on hard inputs, validation of
their input and constructor arguments, and the gradient ``aggregate_backward`` writes with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import labelgrad as lg
from aggregators.hard_jacobians import (
    DTYPE_IDS,
    DTYPES,
    HARD,
    HARD_IDS,
)

A = lg.aggregators


NEW_GRAMIAN: list[Callable[[], Any]] = [
    A.Constant,
    A.Krum,
    A.CRMOGM,
    A.MoDo,
    A.SDMGrad,
    A.PCD,
]


NEW_JACOBIAN: list[Callable[[], Any]] = [A.TrimmedMean, A.ExcessMTL]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", HARD_IDS)
@pytest.mark.parametrize("make", NEW_GRAMIAN + NEW_JACOBIAN, ids=lambda f: f.__name__)
def test_defaults_give_finite_results_on_hard_inputs(
    make: Callable[[], Any], name: str, dtype: torch.dtype
) -> None:
    j = HARD[name].to(dtype)
    agg = make()
    if isinstance(agg, A.Krum) and j.shape[0] < 3:
        with pytest.raises(ValueError, match="K >= 3"):
            agg.weights(j @ j.T)
        return
    jacobian = isinstance(agg, A.JacobianAggregator)
    out = agg.aggregate(j) if jacobian else agg.weights(j @ j.T)
    expected_shape = (j.shape[1],) if jacobian else (j.shape[0],)
    assert out.shape == expected_shape
    assert out.dtype == dtype
    assert bool(out.isfinite().all())


@pytest.mark.parametrize("make", NEW_GRAMIAN, ids=lambda f: f.__name__)
def test_gramian_validation(make: Callable[[], A.GramianWeighting]) -> None:
    agg = make()
    with pytest.raises(ValueError, match="square"):
        agg.weights(torch.ones(3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        agg.weights(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(TypeError, match="floating"):
        agg.weights(torch.eye(3, dtype=torch.int64))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="weights"):
        A.Constant(torch.ones(2, 2))
    with pytest.raises(ValueError, match="n_byzantine"):
        A.Krum(n_byzantine=-1)
    with pytest.raises(ValueError, match="n_selected"):
        A.Krum(n_selected=0)
    with pytest.raises(ValueError, match="trim_number"):
        A.TrimmedMean(trim_number=-1)
    with pytest.raises(ValueError, match="robust_step_size"):
        A.ExcessMTL(robust_step_size=0.0)
    with pytest.raises(ValueError, match="n_warmup_steps"):
        A.ExcessMTL(n_warmup_steps=-1)
    with pytest.raises(ValueError, match="alpha"):
        A.CRMOGM(alpha=1.5)
    with pytest.raises(TypeError, match="cannot be smoothed"):
        A.CRMOGM(A.ConFIG())
    with pytest.raises(ValueError, match="gamma"):
        A.MoDo(gamma=0.0)
    with pytest.raises(ValueError, match="momentum"):
        A.SDMGrad(momentum=1.0)
    with pytest.raises(ValueError, match="n_iter"):
        A.SDMGrad(n_iter=0)
    with pytest.raises(ValueError, match="tau"):
        A.PCD(tau=1.5)
    with pytest.raises(ValueError, match="beta"):
        A.PCD(beta=1.0)


@pytest.mark.parametrize("make", NEW_GRAMIAN + NEW_JACOBIAN, ids=lambda f: f.__name__)
def test_aggregate_backward_writes_the_aggregated_gradient(make: Callable[[], Any]) -> None:
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh()).double()
    head = torch.nn.Linear(8, 6).double()
    x = torch.randn(16, 5, dtype=torch.float64)
    y = (torch.rand(16, 6, generator=torch.Generator().manual_seed(1)) > 0.5).double()

    def losses() -> Tensor:
        logits = head(trunk(x))
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return bce.mean(dim=0)  # one loss per label: K = 6

    params = list(trunk.parameters())
    rows = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses()]
    jac = torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])
    reference = make()
    if isinstance(reference, A.JacobianAggregator):
        expected = reference.aggregate(jac)
    else:
        expected = jac.T @ reference.weights(jac @ jac.T)
    lg.aggregate_backward(losses(), shared=trunk, aggregator=make(), engine="exact")
    got = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
