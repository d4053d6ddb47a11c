"""HOSTILE.md class 2 (graphs that are not what they seem) at every aggregation entry point.

Losses computed under ``torch.no_grad()`` / ``inference_mode``, from detached features (they
reach none of ``shared``), or reaching only some of ``shared``: every engine of
``aggregate_backward`` and ``project_replay`` must raise a one-line ValueError naming the
argument, never write a silently different gradient. (A-GEM with a replay loss computed under
``no_grad`` used to project against a zero gradient: it did nothing, without a word.)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import labelgrad as lg
from labelgrad.aggregation.graph_checks import check_reaches

ENGINES = ["auto", "exact", "representation", "subset", "sample_gramian"]


def setup() -> tuple[nn.Module, nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6)).double()
    head = nn.Linear(6, 3).double()
    return trunk, head, torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))


def call(engine: str, how: str) -> Callable[[], object]:
    """aggregate_backward with ``engine`` on losses built the hostile way ``how``."""
    trunk, head, x, y = setup()
    tracker = lg.aggregation.track(trunk) if engine == "sample_gramian" else None
    shared: list[Tensor] = list(trunk.parameters())
    if how == "no_grad":
        with torch.no_grad():
            features = trunk(x)
            losses = lg.per_label_losses(head(features), y, loss="ce")
    elif how == "inference_mode":
        with torch.inference_mode():
            features = trunk(x)
            losses = lg.per_label_losses(head(features), y, loss="ce")
    elif how == "detached":
        features = trunk(x).detach()
        losses = lg.per_label_losses(head(features), y, loss="ce")
    else:  # "some": one shared parameter the losses never reach
        features = trunk(x)
        losses = lg.per_label_losses(head(features), y, loss="ce")
        shared.append(nn.Parameter(torch.ones(2, dtype=torch.float64)))
    kwargs: dict[str, object] = {}
    if engine == "representation":
        kwargs["features"] = features
    if engine == "subset":
        kwargs["subset"] = list(trunk[2].parameters())
    if tracker is not None:
        kwargs["tracker"] = tracker
    return lambda: lg.aggregate_backward(
        losses, shared=shared, aggregator=lg.aggregators.UPGrad(), engine=engine, **kwargs
    )


@pytest.mark.parametrize("how", ["no_grad", "inference_mode", "detached", "some"])
@pytest.mark.parametrize("engine", ENGINES)
def test_aggregate_backward_refuses_losses_off_the_shared_graph(engine: str, how: str) -> None:
    run = call(engine, how)
    with pytest.raises(ValueError) as info:
        run()
    message = str(info.value)
    assert "\n" not in message
    # The error names the argument at fault.
    assert any(word in message for word in ("losses", "features", "shared")), message


def replay_setup(
    loss_how: str, replay_how: str, m: int = 1
) -> tuple[Tensor, Tensor, list[Tensor], nn.Module]:
    torch.manual_seed(1)
    trunk, head = nn.Linear(5, 4).double(), nn.Linear(4, 2).double()
    x, old = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)

    def make(inputs: Tensor, how: str) -> Tensor:
        if how == "no_grad":
            with torch.no_grad():
                return head(trunk(inputs)).pow(2).mean(0)[:m].reshape(-1).squeeze()
        features = trunk(inputs)
        if how == "detached":
            features = features.detach()
        return head(features).pow(2).mean(0)[:m].reshape(-1).squeeze()

    return make(x, loss_how).sum(), make(old, replay_how), list(trunk.parameters()), trunk


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize(
    ("loss_how", "replay_how", "name"),
    [
        ("plain", "no_grad", "replay_losses"),
        ("plain", "detached", "replay_losses"),
        ("no_grad", "plain", "loss"),
        ("detached", "plain", "loss"),
    ],
)
@pytest.mark.parametrize("as_module", [False, True], ids=["params", "module"])
def test_project_replay_refuses_losses_off_the_shared_graph(
    loss_how: str, replay_how: str, name: str, m: int, as_module: bool
) -> None:
    loss, replay, params, trunk = replay_setup(loss_how, replay_how, m)
    with pytest.raises(ValueError, match=rf"^{name} (has no autograd graph|reaches none)"):
        lg.project_replay(loss, replay, trunk if as_module else params)
    assert all(p.grad is None for p in params)  # refused before anything was written


def test_project_replay_still_projects_a_conflicting_replay_loss() -> None:
    # The check does not refuse what it must accept: A-GEM against a real conflict.
    w = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    loss = -(w * torch.tensor([1.0, -1.0], dtype=torch.float64)).sum()
    replay = -(w * torch.tensor([0.0, 1.0], dtype=torch.float64)).sum()
    out = lg.project_replay(loss, replay, iter([w]))  # a generator: consumed once
    assert out.weights is not None and out.weights.tolist() == [1.0, 1.0]
    assert w.grad is not None and w.grad.tolist() == [-1.0, 0.0]


def test_check_reaches_reports_which_parameters() -> None:
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    assert check_reaches((a * 2).sum(), [a, b], "loss") == [True, False]
    with pytest.raises(ValueError, match=r"^loss reaches none of the 1 shared"):
        check_reaches((a * 2).sum(), [b], "loss")
