"""One loss per label (or per group of labels) that sum to the ordinary mean loss.

The aggregation engines need the K losses whose gradients conflict. :func:`per_label_losses`
splits the usual mean loss of a batch into K additive parts without a Python loop over classes:
the elementwise (or per-sample) losses are summed into their group with ``index_add``. It also
records how each part depends on the logits (a :class:`LossStructure`, kept in the documented
``metadata`` dict of the losses' autograd node, never as an attribute of the tensor), which
lets the cheap engines avoid per-label backward passes. :func:`loss_structure` reads it back,
through elementwise operations on the losses (``losses * 2.0``, ``losses.clone()``, a constant
(K,) weight...) which keep loss k a function of group k alone; any other operation drops it,
and :func:`find_structure` says which.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from labelgrad._layout import class_last
from labelgrad.targets import Targets, TargetsLike, normalize_class_dim

__all__ = ["LossStructure", "find_structure", "group_ids", "loss_structure", "per_label_losses"]

LossName = Literal["bce", "ce", "focal"]
ElementwiseLoss = Callable[[Tensor, Tensor], Tensor]
GroupsLike = Sequence[Sequence[int]] | Tensor

_STRUCTURE_KEY = "labelgrad.loss_structure"
# Autograd nodes of elementwise operations: through them loss k still depends on group k alone.
_ELEMENTWISE = frozenset(
    {
        "AbsBackward0",
        "AddBackward0",
        "AddBackward1",
        "AliasBackward0",
        "CloneBackward0",
        "DivBackward0",
        "DivBackward1",
        "ExpBackward0",
        "LogBackward0",
        "MulBackward0",
        "MulBackward1",
        "NegBackward0",
        "PowBackward0",
        "RsubBackward1",
        "SqrtBackward0",
        "SubBackward0",
        "SubBackward1",
        "ToCopyBackward0",
    }
)
_MAX_HOPS = 64


@dataclass(frozen=True, eq=False)
class LossStructure:
    """How the K losses of :func:`per_label_losses` depend on the logits.

    Attributes:
        logits: the logits the losses were computed from (as passed in).
        class_dim: their class axis (non-negative).
        kind: ``"column"``: loss k depends only on the logits of the classes of group k (BCE,
            focal, elementwise callables); ``"sample"``: loss k depends only on the logits of the
            samples whose label is in group k (cross-entropy with class indices: groups are
            sample-disjoint); ``"dense"``: neither (cross-entropy with soft targets).
        class_group: (C,) int64 group id of every class, on the logits' device.
        num_groups: K.
        sample_group: for ``kind="sample"``: (N * S,) group id of every sample position (0 where
            ignored); None otherwise.
        sample_known: for ``kind="sample"``: (N * S,) bool, False where the label is ignored.
        identity_groups: True when every class is its own group, in order (``groups=None``).

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(2, 3, requires_grad=True)
        >>> s = lg.aggregation.loss_structure(lg.per_label_losses(z, torch.ones(2, 3)))
        >>> s.kind, s.num_groups, s.logits is z
        ('column', 3, True)
    """

    logits: Tensor
    class_dim: int
    kind: Literal["column", "sample", "dense"]
    class_group: Tensor
    num_groups: int
    sample_group: Tensor | None = None
    sample_known: Tensor | None = None
    identity_groups: bool = False


def find_structure(losses: Tensor) -> tuple[LossStructure | None, str]:
    """The :class:`LossStructure` of ``losses``, or None and the reason it is not there.

    Walks from the losses' autograd node towards the node :func:`per_label_losses` marked,
    through elementwise operations only (each with one input on the graph).

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(4, 3, requires_grad=True)
        >>> losses = lg.per_label_losses(z, torch.ones(4, 3))
        >>> lg.aggregation.find_structure(losses * 2.0)[0].kind
        'column'
        >>> lg.aggregation.find_structure(losses.flip(0))[1]
        'FlipBackward0 between lg.per_label_losses and these losses mixes the labels'
    """
    node = losses.grad_fn
    if node is None:
        return None, "the losses are not on an autograd graph"
    for _ in range(_MAX_HOPS):
        found = _metadata(node).get(_STRUCTURE_KEY)
        if isinstance(found, LossStructure):
            if found.num_groups != losses.numel():
                return None, "the losses are not the K losses of lg.per_label_losses"
            return found, ""
        inputs = [nxt for nxt, _ in node.next_functions if nxt is not None]
        if node.name() not in _ELEMENTWISE or len(inputs) != 1:
            if node.name() in _ELEMENTWISE:
                return None, (
                    f"{node.name()} combines the losses with another tensor on the graph "
                    "after lg.per_label_losses"
                )
            return None, (
                f"{node.name()} between lg.per_label_losses and these losses mixes the labels"
            )
        node = inputs[0]
    return None, "the losses are not from lg.per_label_losses"


def loss_structure(losses: Tensor) -> LossStructure | None:
    """The :class:`LossStructure` of losses made by :func:`per_label_losses`, else None.

    Elementwise operations on the losses keep it (loss k still depends on group k alone);
    others (indexing, mixing the losses) drop it, so the engines then take their general path
    (:func:`find_structure` and :func:`labelgrad.explain_engine` say why).

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.zeros(4, 3, requires_grad=True)
        >>> losses = lg.per_label_losses(z, torch.tensor([0, 1, 2, 1]), loss="ce")
        >>> lg.aggregation.loss_structure(losses).kind
        'sample'
        >>> lg.aggregation.loss_structure(losses.clone() * 2).kind
        'sample'
        >>> lg.aggregation.loss_structure(losses[[1, 0, 2]]) is None
        True
    """
    return find_structure(losses)[0]


def group_ids(groups: object, num_classes: int) -> tuple[Tensor, int]:
    """Validate ``groups`` and return the (C,) int64 group id of every class (CPU) and K.

    Args:
        groups: None (every class its own group), a list of lists of class indices that
            partitions ``range(num_classes)``, or a (C,) integer tensor of group ids in
            ``[0, K)`` where every id is used.
        num_classes: C.

    Returns:
        (group id per class, number of groups K).

    Raises:
        TypeError: ``groups`` has the wrong type.
        ValueError: classes out of range, missing or in several groups; empty group ids.

    Example:
        >>> import labelgrad as lg
        >>> ids, k = lg.aggregation.group_ids([[0, 2], [1]], num_classes=3)
        >>> ids.tolist(), k
        ([0, 1, 0], 2)
    """
    if groups is None:
        return torch.arange(num_classes), num_classes
    if isinstance(groups, Tensor):
        version = _version_of(groups)
        known = _GROUP_CACHE.get(id(groups))
        if known is not None and version is not None:
            ref, seen, c, snapshot, ids_known, k_known = known
            # The same tensor, unchanged since, same C: checked already. The version counter
            # alone misses writes that autograd does not see (through ``.data``, or a NumPy
            # array sharing the memory), so on CPU the values are compared too (one operator and
            # a free read, not the dozen of a check). A copy, so an edit of the ids reaches nobody.
            if ref() is groups and seen == version and c == num_classes and _same(groups, snapshot):
                return ids_known.clone(), k_known
        ids, k = _tensor_group_ids(groups, num_classes)
        if version is not None:
            if len(_GROUP_CACHE) >= _GROUP_CACHE_SIZE:
                _GROUP_CACHE.pop(next(iter(_GROUP_CACHE)))
            snapshot = groups.detach().clone()
            _GROUP_CACHE[id(groups)] = (
                weakref.ref(groups),
                version,
                num_classes,
                snapshot,
                ids.clone(),
                k,
            )
        return ids.clone(), k
    return _list_group_ids(groups, num_classes)


# Validated group-id tensors: the groups of a training run are one constant tensor, checked
# once (a check costs two reads to the host and a dozen operators) instead of every step.
_GROUP_CACHE: dict[int, tuple[weakref.ref[Tensor], int, int, Tensor, Tensor, int]] = {}
_GROUP_CACHE_SIZE = 8


def _same(t: Tensor, snapshot: Tensor) -> bool:
    """Whether ``t`` still holds the values of ``snapshot`` (its copy when it was checked);
    integer ids never require grad, so no detach is needed.

    The values are compared on CPU tensors only, where the read is free (and where NumPy views
    live); on an accelerator the comparison would be a host sync every step, so there the
    version counter decides (a write through ``.data`` to a device tensor of ids is not seen).
    """
    same_form = t.device == snapshot.device and t.dtype == snapshot.dtype
    if not (same_form and t.shape == snapshot.shape):
        return False
    return t.device.type != "cpu" or torch.equal(t, snapshot)


def _version_of(t: Tensor) -> int | None:
    """The in-place version counter of ``t``; None where it has none (inference tensors)."""
    try:
        return int(t._version)
    except RuntimeError:
        return None


def _tensor_group_ids(groups: Tensor, num_classes: int) -> tuple[Tensor, int]:
    """``group_ids`` of a (C,) tensor of group ids (validated)."""
    ids = groups.detach().cpu()
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"groups as a tensor must hold integer group ids, got {ids.dtype}")
    if ids.shape != (num_classes,):
        raise ValueError(
            f"groups as a tensor must have shape ({num_classes},) (a group id per class), "
            f"got {tuple(ids.shape)}"
        )
    ids = ids.long()
    if num_classes and int(ids.min()) < 0:
        raise ValueError("groups must hold non-negative group ids")
    k = int(ids.max()) + 1 if num_classes else 0
    used = torch.zeros(k, dtype=torch.bool)
    used[ids] = True
    if not bool(used.all()):
        missing = (~used).nonzero().flatten().tolist()
        raise ValueError(
            f"groups: group ids must be 0..K-1 with every id used; unused ids {missing[:10]}"
        )
    return ids, k


def _list_group_ids(groups: object, num_classes: int) -> tuple[Tensor, int]:
    """``group_ids`` of a list of lists of class indices (validated)."""
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise TypeError(
            "groups must be None, a list of lists of class indices, or a (C,) tensor of group "
            f"ids, got {type(groups).__name__}"
        )
    ids = torch.full((num_classes,), -1, dtype=torch.long)
    for g, item in enumerate(groups):
        members: object = item.tolist() if isinstance(item, Tensor) else item
        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence):
            raise TypeError(f"groups[{g}] must be a list of class indices, got {members!r}")
        if len(members) == 0:
            raise ValueError(f"groups[{g}] is empty: every group needs at least one class")
        for c in members:
            if isinstance(c, bool) or not isinstance(c, int):
                raise TypeError(f"groups[{g}] must hold int class indices, got {c!r}")
            if not 0 <= c < num_classes:
                raise ValueError(
                    f"groups[{g}] holds class {c}, out of range for {num_classes} classes"
                )
            if int(ids[c]) != -1:
                raise ValueError(
                    f"class {c} is in groups[{int(ids[c])}] and groups[{g}]: groups must not "
                    "overlap (the K losses must sum to the mean loss)"
                )
            ids[c] = g
    missing = (ids < 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"groups must cover every class; classes {missing[:10]} are in no group "
            "(put them in a group of their own, or mask them with a policy)"
        )
    return ids, len(groups)


def per_label_losses(
    logits: Tensor,
    targets: TargetsLike,
    loss: LossName | ElementwiseLoss = "bce",
    groups: GroupsLike | None = None,
    *,
    class_dim: int = 1,
    ignore_index: int = -100,
    focal_gamma: float = 2.0,
    focal_alpha: float = 0.25,
) -> Tensor:
    """Split the mean loss of a batch into K losses, one per label or per group of labels.

    The K losses sum to the ordinary mean loss:

    - ``"bce"``: ``BCEWithLogitsLoss`` (mean) over the known entries; loss k is the sum of the
      elementwise losses of the classes of group k divided by the number of known entries.
    - ``"focal"``: the sigmoid focal loss of Lin et al. (2017) with ``focal_gamma`` and
      ``focal_alpha`` (torchvision's ``sigmoid_focal_loss`` defaults), split like ``"bce"``.
    - a callable ``loss(logits, targets) -> elementwise losses`` of the logits' shape (e.g.
      ``functools.partial(F.binary_cross_entropy_with_logits, reduction="none")``), split like
      ``"bce"``; it sees the logits and float target values with the class axis last.
    - ``"ce"`` with class indices: ``CrossEntropyLoss(ignore_index=...)`` (mean over the
      non-ignored samples); loss k is the sum of the losses of the samples whose label is in
      group k divided by the number of non-ignored samples. With soft or multi-hot targets
      (probabilities): loss k is ``-sum(y[:, c] * log_softmax(z)[:, c] for c in group k) / N``.

    Unknown labels (``Targets.known`` False) contribute nothing. An empty batch or a batch with
    every label unknown gives zero losses that still depend on the logits (zero gradient, no NaN).

    Args:
        logits: (N, C, *) logits, class axis at ``class_dim``; may come out of a policy.
        targets: any encoding :meth:`labelgrad.Targets.coerce` accepts, or a ``Targets``.
        loss: ``"bce"``, ``"ce"``, ``"focal"`` or an elementwise callable.
        groups: None (one loss per class), a list of lists of classes partitioning the classes,
            or a (C,) tensor of group ids.
        class_dim: the class axis of the logits.
        ignore_index: the "no label" class index for class-index targets.
        focal_gamma: focusing parameter of ``"focal"``.
        focal_alpha: positive-class weight of ``"focal"`` in [0, 1] (negatives: 1 - alpha);
            -1 disables the weighting (torchvision's convention).

    Returns:
        A (K,) tensor of losses.

    Raises:
        TypeError, ValueError: invalid ``loss``, ``groups``, targets, ``focal_gamma`` (a
            finite number >= 0) or ``focal_alpha`` (in [0, 1], or -1).

    Example:
        >>> import torch, labelgrad as lg
        >>> z = torch.randn(8, 4)
        >>> y = torch.randint(0, 2, (8, 4))
        >>> losses = lg.per_label_losses(z, y, loss="bce", groups=[[0, 1], [2], [3]])
        >>> losses.shape
        torch.Size([3])
        >>> mean = torch.nn.functional.binary_cross_entropy_with_logits(z, y.float())
        >>> torch.allclose(losses.sum(), mean)
        True
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor of shape (N, C, *)")
    _check_focal(focal_gamma, focal_alpha)
    cd = normalize_class_dim(class_dim, logits.dim())
    t = Targets.coerce(targets, class_dim=cd, ignore_index=ignore_index, like=logits)
    if t.device != logits.device:
        # Validated where they were (free on the CPU), then copied, as Policy.forward does.
        t = t.to(logits.device)
    num_classes = logits.shape[cd]
    ids_cpu, k = group_ids(groups, num_classes)
    class_group = ids_cpu.to(logits.device)
    n = logits.shape[0]
    positions = math.prod(logits.shape[1:]) // max(num_classes, 1)

    z = class_last(logits, cd, n, positions, num_classes)  # explicit S for empty batches
    if loss == "ce" and t.indices is not None:
        # Class indices need neither the (N, C) known mask nor the one-hot target values.
        return _ce_index(logits, z, t.indices.reshape(-1), cd, class_group, k, ignore_index)
    known = class_last(t.known, cd, n, positions, num_classes)
    values = class_last(t.values, cd, n, positions, num_classes).to(z.dtype)

    if loss == "ce":
        logp = torch.log_softmax(z, dim=-1)
        per_entry = -(values * logp) * known
        denom = max(n * z.shape[1], 1)
        per_class = per_entry.sum(dim=(0, 1)) / denom
        return _finish(per_class, class_group, k, logits, cd, "dense", groups is None)

    if callable(loss) and not isinstance(loss, str):
        per_entry = loss(z, values)
        if not isinstance(per_entry, Tensor) or per_entry.shape != z.shape:
            raise ValueError(
                "a callable loss must return elementwise losses of the shape of the logits it "
                f"is given, {tuple(z.shape)} (class axis last; use reduction='none'), got "
                f"{getattr(per_entry, 'shape', type(per_entry).__name__)}"
            )
    elif loss == "bce":
        per_entry = F.binary_cross_entropy_with_logits(z, values, reduction="none")
    elif loss == "focal":
        per_entry = _sigmoid_focal(z, values, focal_gamma, focal_alpha)
    else:
        raise ValueError(f"loss must be 'bce', 'ce', 'focal' or a callable, got {loss!r}")
    per_entry = torch.where(known, per_entry, _zero(per_entry.dtype))
    count = torch.count_nonzero(known).clamp_min(1).to(per_entry.dtype)
    per_class = per_entry.sum(dim=(0, 1)) / count
    return _finish(per_class, class_group, k, logits, cd, "column", groups is None)


# 0-d CPU zeros by dtype, read-only operands of torch.where (a 0-d CPU tensor is valid with
# tensors on any device): made once, not three operators per call. Made outside inference mode,
# so that a first call under torch.inference_mode() does not cache an inference tensor.
_ZEROS: dict[torch.dtype, Tensor] = {}


def _zero(dtype: torch.dtype) -> Tensor:
    zero = _ZEROS.get(dtype)
    if zero is None:
        with torch.inference_mode(False):
            zero = _ZEROS[dtype] = torch.zeros((), dtype=dtype)
    return zero


def _check_focal(gamma: object, alpha: object) -> None:
    for name, value in (("focal_gamma", gamma), ("focal_alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    assert isinstance(gamma, (int, float))
    assert isinstance(alpha, (int, float))
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"focal_gamma must be a finite number >= 0, got {gamma!r}")
    if not (0 <= alpha <= 1 or alpha == -1):
        raise ValueError(
            f"focal_alpha must be in [0, 1] (or -1 to disable the weighting), got {alpha!r}"
        )


def _sigmoid_focal(z: Tensor, y: Tensor, gamma: float, alpha: float) -> Tensor:
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    p = torch.sigmoid(z)
    p_t = p * y + (1 - p) * (1 - y)
    out = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        out = out * (alpha * y + (1 - alpha) * (1 - y))
    return out


def _ce_index(
    logits: Tensor,
    z: Tensor,
    idx: Tensor,
    cd: int,
    class_group: Tensor,
    k: int,
    ignore_index: int,
) -> Tensor:
    flat = z.reshape(-1, z.shape[-1])
    valid = idx != ignore_index
    per_sample = F.cross_entropy(flat, idx, ignore_index=ignore_index, reduction="none")
    safe = torch.where(valid, idx, _zero(idx.dtype))
    sample_group = class_group[safe]
    count = torch.count_nonzero(valid).clamp_min(1).to(per_sample.dtype)
    out = torch.zeros(k, dtype=per_sample.dtype, device=z.device)
    out = out.index_add(0, sample_group, per_sample / count)
    # index_add keeps the losses on the graph even when every sample is ignored (zero gradient);
    # an ignored sample's logits do not reach the losses, as in CrossEntropyLoss(ignore_index).
    structure = LossStructure(logits, cd, "sample", class_group, k, sample_group, valid)
    return _mark(out, structure)


def _finish(
    per_class: Tensor,
    class_group: Tensor,
    k: int,
    logits: Tensor,
    cd: int,
    kind: Literal["column", "dense"],
    identity: bool,
) -> Tensor:
    if identity:
        out = per_class
    else:
        out = torch.zeros(k, dtype=per_class.dtype, device=per_class.device)
        out = out.index_add(0, class_group, per_class)
    structure = LossStructure(logits, cd, kind, class_group, k, identity_groups=identity)
    return _mark(out, structure)


def _mark(out: Tensor, structure: LossStructure) -> Tensor:
    """Record ``structure`` in the metadata of the losses' autograd node (none: no graph)."""
    if out.grad_fn is not None:
        _metadata(out.grad_fn)[_STRUCTURE_KEY] = structure
    return out


def _metadata(node: object) -> dict[str, object]:
    """The documented per-node ``metadata`` dict of an autograd node (a property at runtime)."""
    meta: dict[str, object] = node.metadata  # type: ignore[attr-defined]
    return meta
