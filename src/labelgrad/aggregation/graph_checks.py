"""The one check that a loss reaches the parameters it must (HOSTILE.md class 2: graphs)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from labelgrad.aggregation import _graph

__all__ = ["check_reaches"]


def check_reaches(tensor: Tensor, params: Sequence[Tensor], name: str) -> list[bool]:
    """Which of ``params`` a backward from ``tensor`` reaches; ValueError where it reaches none.

    A loss computed under ``torch.no_grad()`` / ``inference_mode`` (no graph at all), or from
    detached features (a graph that stops before the parameters), would otherwise contribute a
    zero gradient without a word: a projection against it silently does nothing. The error
    names the argument (``name``) and the expected form.

    Args:
        tensor: the loss (or losses) whose graph is walked.
        params: the parameters it must reach (at least one of them).
        name: the argument's name, for the error.

    Returns:
        For each parameter, whether ``tensor`` reaches it (what to do when only some are
        reached is the caller's documented choice).

    Raises:
        ValueError: ``tensor`` has no autograd graph, or reaches none of ``params``.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> check_reaches((w * 2).sum(), [w], "loss")
        [True]
        >>> check_reaches((w * 2).sum().detach(), [w], "loss")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: loss has no autograd graph (computed under torch.no_grad() or ...
    """
    if not tensor.requires_grad:
        raise ValueError(
            f"{name} has no autograd graph (computed under torch.no_grad() or inference_mode, "
            "or detached): compute it with gradients enabled from the shared parameters"
        )
    reached = {id(leaf) for leaf in _graph.leaves_reached(tensor)}
    hits = [id(p) in reached for p in params]
    if not any(hits):
        raise ValueError(
            f"{name} reaches none of the {len(params)} shared parameters (computed from "
            "detached features, or from other parameters): its gradient on them would be 0"
        )
    return hits
