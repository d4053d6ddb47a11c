"""Replay projection for class-incremental learning: A-GEM and its per-group (GEM) variant.

The batch's gradient g on the shared parameters is projected so that it does not increase the
loss on a replay memory of old classes, to first order. With one replay loss this is A-GEM
(Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019): if g . g_ref < 0,
g <- g - (g . g_ref / |g_ref|^2) g_ref. With one replay loss per group of old classes (e.g. per
earlier task) it is the projection of GEM (Lopez-Paz & Ranzato, NeurIPS 2017) onto
{x : x . g_m >= 0 for every group m}, computed from the groups' reference gradients. Both are
weightings of the (1 + M) x (1 + M) Gramian of [g; g_1; ...; g_M], so they run through
:func:`labelgrad.aggregate_backward` and its engines: the update is g + sum_m v_m g_m, one
weighted backward.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from labelgrad.aggregation import AggregationResult, aggregate_backward
from labelgrad.aggregation.graph_checks import check_reaches
from labelgrad.aggregators import GramianWeighting

__all__ = ["ReplayProjection", "project_replay"]

MAX_GROUPS = 12  # the exact per-group solve enumerates 2^M active sets


def _agem(gramian: Tensor) -> Tensor:
    dot, ref = gramian[0, 1], gramian[1, 1]
    conflict = (dot < 0) & (ref > 0)
    return torch.where(conflict, -dot / torch.where(ref > 0, ref, torch.ones_like(ref)), 0 * ref)


def _gem(gramian: Tensor) -> Tensor:
    """argmin_{v >= 0} |g + R^T v|^2, exactly: the KKT point among all 2^M active sets.

    Vectorised over the sets (no host sync, no iteration tolerance): each set S solves
    A_SS v_S = -b_S (pseudo-inverse: duplicated or zero groups are fine), and the set whose
    solution satisfies v >= 0, A v + b >= 0 and (A v + b)_S = 0 is kept. The KKT conditions are
    checked on the problem rescaled to unit-norm gradients, so that groups of very different
    magnitudes are judged alike.
    """
    norms = gramian.diagonal().clamp(min=0).sqrt()
    inv = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, 1.0), 0.0)
    unit = gramian * inv[:, None] * inv[None, :]
    a, b = unit[1:, 1:], unit[1:, 0]
    m = a.shape[0]
    bits = torch.arange(1 << m, device=a.device)
    free = ((bits[:, None] >> torch.arange(m, device=a.device)) & 1).bool()  # (B, M)
    pair = free[:, :, None] & free[:, None, :]
    eye = torch.eye(m, dtype=a.dtype, device=a.device)
    system = torch.where(pair, a, 0 * a) + torch.where(free, 0.0, 1.0).to(a.dtype)[:, None] * eye
    rhs = torch.where(free, -b, 0 * b)
    v = (torch.linalg.pinv(system, hermitian=True) @ rhs[..., None]).squeeze(-1)
    v = torch.where(free, v, 0 * v)
    grad = v @ a + b
    violation = (
        torch.relu(-v).sum(-1)
        + torch.relu(-grad).sum(-1)
        + torch.where(free, grad.abs(), 0 * grad).sum(-1)
    )
    objective = 0.5 * (v * (v @ a)).sum(-1) + (b * v).sum(-1)
    feasible = violation <= 1e-9 * m
    inf = torch.full_like(objective, float("inf"))
    best = torch.where(feasible.any(), torch.where(feasible, objective, inf), violation).argmin()
    # index_select, not v[best]: indexing with a 0-d tensor reads it back to the host.
    chosen = torch.index_select(v, 0, best.reshape(1)).squeeze(0).clamp(min=0)
    # Back to the original scale: w_m = v'_m |g| / |g_m|.
    return chosen * norms[0] * inv[1:]


class ReplayProjection(GramianWeighting):
    """A-GEM (one replay loss) or GEM-style per-group projection, as a Gramian weighting.

    Row 0 of the Gramian is the batch's gradient g, rows 1..M the replay gradients g_m. The
    weights are ``[1, v_1, ..., v_M]`` with ``v = argmin_{v >= 0} |g + sum_m v_m g_m|^2``: the
    update ``g + sum_m v_m g_m`` is the Euclidean projection of g onto the half-spaces
    ``{x : x . g_m >= 0}``; for M = 1 the closed form of A-GEM. Exact (no regularisation, no
    iteration tolerance); at most 12 groups (the per-group solve enumerates the 2^M active sets).
    A weight is 0 where a replay gradient is zero or does not conflict with g.

    Example:
        >>> import torch, labelgrad as lg
        >>> g, ref = torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0])
        >>> J = torch.stack([g, ref])
        >>> w = lg.ReplayProjection().weights(J @ J.T)
        >>> w.tolist(), (w @ J).tolist()  # g loses its component against ref
        ([1.0, 1.0], [1.0, 0.0])
    """

    def _weights(self, gramian: Tensor, /) -> Tensor:
        k = gramian.shape[0]
        if k < 2 or k > MAX_GROUPS + 1:
            raise ValueError(
                "ReplayProjection needs a (1 + M) x (1 + M) Gramian (the batch, then M replay "
                f"groups) with 1 <= M <= {MAX_GROUPS}, got shape {tuple(gramian.shape)}"
            )
        g = gramian.to(torch.float64) if gramian.device.type != "mps" else gramian
        v = _agem(g).reshape(1) if k == 2 else _gem(g)
        return torch.cat([torch.ones_like(v[:1]), v]).to(gramian.dtype)


def project_replay(
    loss: Tensor,
    replay_losses: Tensor,
    shared: Iterable[Tensor] | nn.Module,
    **kwargs: Any,
) -> AggregationResult:
    """Backward of ``loss`` with its gradient projected against replay losses (A-GEM / GEM).

    The shared parameters receive ``g + sum_m v_m g_m`` (see :class:`ReplayProjection`), where
    g is the gradient of ``loss`` (the current batch) and g_m that of ``replay_losses[m]`` (a
    batch drawn from the replay memory: one loss for A-GEM, or one per group of old classes, e.g.
    from :func:`labelgrad.per_label_losses` with ``groups=``). Pass every trainable parameter as
    ``shared`` for the published method: parameters outside it receive the plain gradient of
    ``loss + replay_losses.sum()``. Combine with :class:`labelgrad.RowRules` to freeze or slow
    the old classes' rows: project first, then ``opt.step(targets=y)``.

    Cost: the gradients of 1 + M losses (``engine="exact"``: batched VJPs; pass
    ``engine="representation", features=...`` or ``"subset"`` for cheaper, approximate
    Gramians), and one weighted backward.

    Args:
        loss: the current batch's scalar loss.
        replay_losses: a scalar or (M,) losses on the replay memory, 1 <= M <= 12.
        shared: the parameters the projection acts on (an iterable or an ``nn.Module``).
        **kwargs: passed on to :func:`labelgrad.aggregate_backward` (``engine``, ``features``,
            ``subset``, ``chunk_size``, ...).

    Returns:
        The :class:`labelgrad.aggregation.AggregationResult`; ``weights[1:]`` are the v_m
        (0 when the batch does not conflict with the memory).

    Raises:
        ValueError: ``loss`` or ``replay_losses`` has no autograd graph (computed under
            ``torch.no_grad()``, ``inference_mode`` or detached) or reaches none of ``shared``
            (e.g. computed from detached features): its projection would silently do nothing.
            Where the losses reach only some of ``shared``, the engine decides as in
            :func:`labelgrad.aggregate_backward` (the exact engine refuses unreached shared
            parameters). A replay loss of several (M,) that reaches ``shared`` only through
            some of its entries is not detected: an entry without a path has weight 0.

    Example:
        >>> import torch, labelgrad as lg
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
        >>> loss = -(w * torch.tensor([1.0, -1.0])).sum()  # g = [-1, 1]
        >>> replay = -(w * torch.tensor([0.0, 1.0])).sum()  # g_ref = [0, -1]: they conflict
        >>> out = lg.project_replay(loss, replay, [w])
        >>> out.weights.tolist(), w.grad.tolist()
        ([1.0, 1.0], [-1.0, 0.0])
    """
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("loss must be a scalar tensor (the current batch's loss)")
    if not isinstance(replay_losses, Tensor) or replay_losses.dim() > 1:
        raise ValueError("replay_losses must be a scalar or a (M,) tensor of replay losses")
    if replay_losses.numel() == 0:
        raise ValueError("replay_losses is empty: pass a scalar or (M,) losses, 1 <= M <= 12")
    # Each part must reach the shared parameters: a replay loss computed under no_grad or from
    # detached features has a zero gradient there, and the projection would do nothing.
    params: list[Tensor]
    if isinstance(shared, nn.Module):
        params = [p for p in shared.parameters() if p.requires_grad]
    elif isinstance(shared, Tensor):
        params = [shared]
    else:
        shared = list(shared)
        params = [p for p in shared if isinstance(p, Tensor)]
    check_reaches(loss, params, "loss")
    check_reaches(replay_losses, params, "replay_losses")
    losses = torch.cat([loss.reshape(1), replay_losses.reshape(-1).to(loss.dtype)])
    kwargs.setdefault("engine", "exact")
    return aggregate_backward(losses, shared, ReplayProjection(), **kwargs)
