"""One validated representation for every label encoding.

Every public entry point of labelgrad accepts labels in any of the usual encodings and turns them
into a :class:`Targets`. The encoding is decided from dtype and shape alone (never from the values,
which would need a host-device synchronisation); where dtype and shape leave it open, the caller
must say which encoding is meant with ``encoding=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import torch
from torch import Tensor

from labelgrad._layout import class_last
from labelgrad._validation import as_count

__all__ = ["Encoding", "Targets", "TargetsLike"]

Encoding = Literal["index", "multi_hot", "soft"]
"""``"index"``: class indices (N, *) with ``ignore_index``; ``"multi_hot"``: (N, C, *) in {0, 1},
with -1 marking an unknown label; ``"soft"``: (N, C, *) probabilities in [0, 1], -1 = unknown."""

_ENCODINGS = ("index", "multi_hot", "soft")
_MINUS_ONE, _ONE = torch.tensor(-1), torch.tensor(1)  # never written to
_FLOAT_CONSTANTS: dict[torch.dtype, tuple[Tensor, ...]] = {}


def _version(tensor: Tensor | None) -> int | None:
    """The in-place version counter of ``tensor`` (None where it has none: inference tensors,
    tensors inside torch.compile / torch.func, or no tensor)."""
    if tensor is None or _tracing():
        return None
    try:
        return int(tensor._version)
    except RuntimeError:  # inference-mode tensors track no version
        return None


def _moved(
    dense: Tensor | None, float_labels: Tensor | None, device: torch.device | str
) -> Tensor | None:
    """The private float copy of integer labels on ``device`` (None when float_labels is it)."""
    if dense is None or dense is float_labels:
        return None
    return dense.to(device)


def _flat_or_none(flat: Callable[[Tensor], Tensor], x: Tensor | None) -> Tensor | None:
    return None if x is None else flat(x)


def _float_constants(targets: Tensor) -> tuple[Tensor | float, ...]:
    """0, 0.5, 1 and -1 to compare and clamp float labels with: 0-d tensors of their dtype on
    the CPU (a Python float costs up to four conversion operators per call there; the four are
    exact in every floating dtype), Python floats elsewhere. Never written to."""
    if targets.device.type != "cpu":
        return 0.0, 0.5, 1.0, -1.0
    found = _FLOAT_CONSTANTS.get(targets.dtype)
    if found is None:
        found = tuple(torch.tensor(v, dtype=targets.dtype) for v in (0.0, 0.5, 1.0, -1.0))
        _FLOAT_CONSTANTS[targets.dtype] = found
    return found


@dataclass(frozen=True, eq=False, init=False)
class Targets:
    """Validated labels of a batch, laid out like the logits they belong to.

    Build one with :meth:`Targets.coerce`; every labelgrad function accepts either a ``Targets``
    or any raw encoding and coerces it.

    Attributes:
        positive: bool tensor (N, C, *) with the class axis at ``class_dim``: the label is positive
            (for soft labels: probability >= 0.5).
        known: bool tensor of the same shape: False where the label is unknown or ignored.
        num_classes: the number of classes C.
        class_dim: the class axis of ``positive`` and ``known`` (non-negative).
        encoding: the encoding the labels came in.
        indices: for ``encoding="index"``, the (N, *) int64 class indices (``ignore_index`` where
            ignored); None otherwise.
        values: float tensor shaped like ``positive``: the target value of each entry (1/0 for
            hard labels, float32; the probability for soft labels, in their floating dtype, so
            float64 stays float64; 0 where unknown).
        float_labels: for labels given as a float tensor (soft, or float multi-hot as BCE takes
            them), that tensor laid out like ``known`` (-1 where unknown); None otherwise.
            ``known``, ``positive`` and ``values`` follow from it when first read (integer
            multi-hot labels likewise, from a private float32 copy): a policy pays only for what
            it reads, and :meth:`mask_as` compares the labels straight into 0/1 numbers.

    Example:
        >>> import torch, labelgrad as lg
        >>> t = lg.Targets.coerce(torch.tensor([2, 0, -100]), num_classes=3)
        >>> t.positive.int().tolist()
        [[0, 0, 1], [1, 0, 0], [0, 0, 0]]
        >>> t.known.all(dim=1).tolist()
        [True, True, False]
        >>> partial = torch.tensor([[1, -1, 0]])
        >>> lg.Targets.coerce(partial, num_classes=3, encoding="multi_hot").known.tolist()
        [[True, False, True]]
    """

    _positive: Tensor | None = field(repr=False)
    _known: Tensor | None = field(repr=False)
    num_classes: int
    class_dim: int
    encoding: Encoding
    indices: Tensor | None
    _values: Tensor | None = field(repr=False)
    float_labels: Tensor | None = field(repr=False)

    def __init__(
        self,
        positive: Tensor | None,
        known: Tensor | None,
        num_classes: int,
        class_dim: int,
        encoding: Encoding,
        indices: Tensor | None = None,
        values: Tensor | None = None,
        *,
        float_labels: Tensor | None = None,
        _dense: Tensor | None = None,
    ) -> None:
        # Frozen: fields are set once here. values=None (hard labels) is computed from
        # positive on first access: most policies never read it, and it costs a cast per batch.
        # positive=None, known=None: computed from float_labels on first access, as values are
        # (or from _dense, a private float copy of integer multi-hot labels).
        dense = float_labels if _dense is None else _dense
        if (positive is None or known is None) and dense is None:
            raise ValueError(
                "Targets needs positive and known, or float_labels to compute them from"
            )
        for name, value in (
            ("_positive", positive),
            ("float_labels", float_labels),
            ("_dense", dense),
            ("_labels_version", _version(dense)),
            ("_known", known),
            ("num_classes", num_classes),
            ("class_dim", class_dim),
            ("encoding", encoding),
            ("indices", indices),
            ("_values", values),
            ("_masks", {}),
        ):
            object.__setattr__(self, name, value)

    def mask_as(self, name: Literal["positive", "known"], dtype: torch.dtype) -> Tensor:
        """``positive`` or ``known`` as 0/1 numbers of ``dtype``, computed once per object.

        Policies multiply by masks instead of selecting with them (``torch.where`` on a bool
        mask is many times slower than a multiplication on the CPU); the conversion is cached so
        that the policies of one chain share it.

        Example:
            >>> import torch, labelgrad as lg
            >>> y = torch.tensor([[1, -1, 0]])
            >>> t = lg.Targets.coerce(y, num_classes=3, encoding="multi_hot")
            >>> t.mask_as("known", torch.float32).tolist()
            [[1.0, 0.0, 1.0]]
        """
        if name not in ("positive", "known"):
            raise ValueError(f"name must be 'positive' or 'known', got {name!r}")
        key = (name, dtype)
        cache: dict[tuple[str, torch.dtype], Tensor] = self._masks  # type: ignore[attr-defined]
        mask = cache.get(key)
        if mask is None:
            mask = self._mask01(name, dtype)
            cache[key] = mask
        return mask

    def _mask01(self, name: Literal["positive", "known"], dtype: torch.dtype) -> Tensor:
        """Compute :meth:`mask_as`'s mask. On the CPU a bool -> float cast is several times
        slower than the comparison that made the bool tensor: float labels are compared straight
        into a float tensor, bool masks are cast through their uint8 view (the same bytes)."""
        bool_mask = self._positive if name == "positive" else self._known
        fast = dtype.is_floating_point and not _tracing()
        if bool_mask is None and fast:
            labels = self._labels_unchanged()
            threshold = _float_constants(labels)[1 if name == "positive" else 0]
            out = torch.empty(labels.shape, dtype=dtype, device=labels.device)
            return torch.ge(labels, threshold, out=out)
        mask = getattr(self, name)
        if fast and mask.device.type == "cpu":
            out = torch.empty(mask.shape, dtype=dtype)
            return out.copy_(mask.view(torch.uint8))
        converted: Tensor = mask.to(dtype)
        return converted

    def _labels_unchanged(self) -> Tensor:
        """The labels as floats (``float_labels``, or the private float copy of integer
        multi-hot labels), after checking that nobody changed them in place since."""
        labels: Tensor | None = self._dense  # type: ignore[attr-defined]
        assert labels is not None
        recorded: int | None = self._labels_version  # type: ignore[attr-defined]
        now = _version(labels)
        # None on either side (inside torch.func / torch.compile, inference tensors): no
        # counter to compare, so no verdict (a Targets made outside a transform stays usable in it).
        if now is not None and recorded is not None and now != recorded:
            raise RuntimeError(
                "the float labels of this Targets were modified in place after "
                "Targets.coerce; coerce the new labels (or pass a copy)"
            )
        return labels

    @property
    def known(self) -> Tensor:
        """Bool tensor (N, C, *): False where the label is unknown or ignored."""
        if self._known is None:
            labels = self._labels_unchanged()
            object.__setattr__(self, "_known", labels >= _float_constants(labels)[0])
        known: Tensor = self._known  # type: ignore[assignment]
        return known

    @property
    def positive(self) -> Tensor:
        """Bool tensor shaped like ``known``: the label is positive (see the class doc)."""
        if self._positive is None:
            labels = self._labels_unchanged()
            # >= 0.5 on the labels themselves: -1 (unknown) is not positive, as after clamping.
            object.__setattr__(self, "_positive", labels >= _float_constants(labels)[1])
        positive: Tensor = self._positive  # type: ignore[assignment]
        return positive

    @property
    def values(self) -> Tensor:
        """Float tensor shaped like ``positive``: each entry's target value (see the class doc)."""
        if self._values is None:
            if self.encoding == "soft" and self.float_labels is not None:
                labels = self._labels_unchanged()
                # -1 (unknown) -> 0; validated values have no other negatives. clamp, not
                # where: one cheap pass. In the caller's floating dtype: a float64 soft target
                # of 0.1 rounded to float32 can change the sign of sigmoid(z) - y near it.
                values = labels.clamp(min=_float_constants(labels)[0])
            else:
                # Hard labels: 1 where positive, 0 elsewhere (unknown entries included).
                values = self.positive.float()
            object.__setattr__(self, "_values", values)
        found: Tensor = self._values  # type: ignore[assignment]
        return found

    @property
    def shape(self) -> torch.Size:
        """The shape of ``positive`` and ``known``: the shape of the logits."""
        return self._any_layout().shape

    @property
    def device(self) -> torch.device:
        """The device the labels live on."""
        return self._any_layout().device

    def _any_layout(self) -> Tensor:
        """A tensor laid out like ``known``, without computing ``known``."""
        found: Tensor | None = self._known if self._known is not None else self._dense  # type: ignore[attr-defined]
        assert found is not None
        return found

    def to(self, device: torch.device | str) -> Targets:
        """Return a copy of these targets on ``device``."""
        return Targets(
            positive=None if self._positive is None else self._positive.to(device),
            known=None if self._known is None else self._known.to(device),
            num_classes=self.num_classes,
            class_dim=self.class_dim,
            encoding=self.encoding,
            indices=None if self.indices is None else self.indices.to(device),
            values=None if self._values is None else self._values.to(device),
            float_labels=None if self.float_labels is None else self.float_labels.to(device),
            _dense=_moved(self._dense, self.float_labels, device),  # type: ignore[attr-defined]
        )

    def class_last(self) -> Targets:
        """Return these targets with the class axis moved last, flattened to (N, S, C).

        S is the product of all non-class, non-sample axes (1 for plain classification). This is
        the layout policies see in :meth:`labelgrad.Policy.transform`.
        """
        if self._dense is not None:  # type: ignore[attr-defined]
            # The flat copy records the labels' version anew: check the old one first, or a
            # change made between coerce and the policy call would go unseen.
            self._labels_unchanged()
        shape = self.shape
        n, c = shape[0], self.num_classes
        s = math.prod(shape) // max(n * c, 1)  # explicit: -1 is ambiguous at n=0

        def flat(x: Tensor) -> Tensor:  # one view in the common (N, C) and (N, T, C) layouts
            return class_last(x, self.class_dim, n, s, c)

        indices = None
        if self.indices is not None:
            indices = self.indices.view(n, s) if self.indices.is_contiguous() else None
            indices = self.indices.reshape(n, s) if indices is None else indices
        out = Targets(
            positive=None if self._positive is None else flat(self._positive),
            known=None if self._known is None else flat(self._known),
            num_classes=c,
            class_dim=2,
            encoding=self.encoding,
            indices=indices,
            values=None if self._values is None else flat(self._values),
            float_labels=None if self.float_labels is None else flat(self.float_labels),
            _dense=None if self.float_labels is not None else _flat_or_none(flat, self._dense),  # type: ignore[attr-defined]
        )
        masks: dict[tuple[str, torch.dtype], Tensor] = self._masks  # type: ignore[attr-defined]
        for key, mask in masks.items():  # the 0/1 masks made so far, in the same layout
            out._masks[key] = flat(mask)  # type: ignore[attr-defined]
        return out

    @classmethod
    def coerce(
        cls,
        targets: TargetsLike,
        *,
        num_classes: int | None = None,
        class_dim: int = 1,
        ignore_index: int = -100,
        encoding: Encoding | None = None,
        like: Tensor | None = None,
        validate: bool | None = None,
    ) -> Targets:
        """Turn any accepted label encoding into a validated :class:`Targets`.

        Args:
            targets: class indices (N, *) of an integer dtype; multi-hot (N, C, *) of bool,
                integer or float dtype, with -1 marking unknown labels; soft labels (N, C, *)
                float in [0, 1] (-1 = unknown); or a ``Targets`` (returned after checks).
            num_classes: the number of classes C. Required for class indices unless ``like`` is
                given; read from ``targets.shape[class_dim]`` for the other encodings if omitted.
            class_dim: the class axis of the logits (and of multi-hot/soft targets). Negative
                values count from the end of the logits' shape.
            ignore_index: class index meaning "no label" for class indices (as in
                ``torch.nn.CrossEntropyLoss``).
            encoding: ``"index"``, ``"multi_hot"`` or ``"soft"``. Needed only where dtype and
                shape leave the encoding open (an integer tensor whose ``class_dim`` axis has
                length C when no ``like`` tensor is given).
            like: the logits the labels belong to. When given, the labels' shape is checked
                against it and the encoding follows from the number of dimensions.
            validate: check label values (range, {-1, 0, 1}, probabilities in [0, 1]). Such
                checks read values back to the host, so the default (None) validates tensors on
                the CPU, where that is free, and skips them on accelerators, while
                ``torch.compile`` traces and under ``torch.func`` transforms.

        Returns:
            The validated targets, laid out like the logits.

        Raises:
            TypeError: ``targets`` is not a tensor, or has an unsupported dtype.
            ValueError: shapes, ``num_classes``, ``class_dim`` or values do not fit, or the
                encoding is ambiguous.
        """
        if isinstance(targets, Targets):
            return _check_existing(targets, num_classes=num_classes, class_dim=class_dim, like=like)
        if not isinstance(targets, Tensor):
            raise TypeError(
                f"targets must be a torch.Tensor or labelgrad.Targets, got {type(targets).__name__}"
            )
        if encoding is not None and encoding not in _ENCODINGS:
            raise ValueError(f"encoding must be one of {_ENCODINGS} or None, got {encoding!r}")
        if num_classes is not None:
            as_count(num_classes, "num_classes")
        if targets.is_complex():
            raise TypeError("targets must be a real tensor (integer, bool or float)")
        enc = _infer_encoding(targets, encoding, num_classes, class_dim, like)
        if validate is None:
            # Free on the CPU; on accelerators (and inside a compiled graph) it would sync.
            validate = targets.device.type == "cpu" and not _tracing()

        if enc == "index":
            return _from_indices(targets, num_classes, class_dim, ignore_index, like, validate)
        return _from_dense(targets, enc, num_classes, class_dim, like, validate)


TargetsLike: TypeAlias = Tensor | Targets
"""Anything :meth:`Targets.coerce` accepts."""


# Private torch API, looked up once (called for every batch).
_functorch_level = getattr(torch._C._functorch, "maybe_current_level", None)


def _tracing() -> bool:
    """True inside torch.compile tracing or a torch.func transform (vmap, grad, ...)."""
    if torch.compiler.is_compiling():
        return True
    return _functorch_level is not None and _functorch_level() is not None


def normalize_class_dim(class_dim: int, ndim: int) -> int:
    """Return ``class_dim`` as a non-negative axis of an ``ndim``-dimensional logits tensor."""
    if isinstance(class_dim, bool) or not isinstance(class_dim, int):
        raise TypeError(f"class_dim must be an int, got {type(class_dim).__name__}")
    if ndim < 2:
        raise ValueError(f"logits must have at least 2 dimensions (N, C, *), got a {ndim}-d tensor")
    if not -ndim <= class_dim < ndim:
        raise ValueError(f"class_dim={class_dim} is out of range for {ndim}-d logits")
    class_dim %= ndim
    if class_dim == 0:
        raise ValueError("class_dim must not be 0: axis 0 is the batch (sample) axis")
    return class_dim


def _infer_encoding(
    targets: Tensor,
    encoding: Encoding | None,
    num_classes: int | None,
    class_dim: int,
    like: Tensor | None,
) -> Encoding:
    is_float = targets.is_floating_point()
    is_bool = targets.dtype == torch.bool
    if encoding is not None:
        if encoding == "index" and (is_float or is_bool):
            raise TypeError(f"class-index targets must have an integer dtype, got {targets.dtype}")
        return encoding
    if is_bool:
        return "multi_hot"
    if is_float:
        lacks_class_axis = targets.dim() <= 1 if like is None else targets.dim() == like.dim() - 1
        if lacks_class_axis:
            # Shaped like class indices: a float tensor here is a dtype mistake, not soft labels.
            raise TypeError(
                f"targets of shape {tuple(targets.shape)} look like class indices, which must "
                f"have an integer dtype, got {targets.dtype} (soft labels are float (N, C, *))"
            )
        return "soft"
    if like is not None:
        if targets.dim() == like.dim() - 1:
            return "index"
        if targets.dim() == like.dim():
            return "multi_hot"
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} fit neither class indices (N, *) nor "
            f"multi-hot (N, C, *) labels for logits of shape {tuple(like.shape)}"
        )
    if targets.dim() <= 1:
        return "index"
    if num_classes is None:
        raise ValueError(
            "integer targets with more than one dimension are ambiguous without num_classes: "
            "pass num_classes=..., encoding='index' or 'multi_hot', or like=logits"
        )
    cd = class_dim % targets.dim() if -targets.dim() <= class_dim < targets.dim() else None
    if cd is None or targets.shape[cd] != num_classes:
        return "index"
    raise ValueError(
        f"integer targets of shape {tuple(targets.shape)} could be class indices or multi-hot "
        f"labels over {num_classes} classes: pass encoding='index' or encoding='multi_hot' "
        "(or like=logits)"
    )


def _from_indices(
    targets: Tensor,
    num_classes: int | None,
    class_dim: int,
    ignore_index: int,
    like: Tensor | None,
    validate: bool,
) -> Targets:
    if targets.dim() < 1:
        raise ValueError("class-index targets must have a batch axis: shape (N, *)")
    if like is not None:
        class_dim = normalize_class_dim(class_dim, like.dim())
        c_like = like.shape[class_dim]
        if num_classes is None:
            num_classes = c_like
        elif num_classes != c_like:
            raise ValueError(
                f"num_classes={num_classes} does not match the logits' class axis "
                f"(class_dim={class_dim}) of length {c_like}"
            )
        expected = like.shape[:class_dim] + like.shape[class_dim + 1 :]
        if targets.shape != expected:
            raise ValueError(
                f"class-index targets must have shape {tuple(expected)} for logits of shape "
                f"{tuple(like.shape)} with class_dim={class_dim}, got {tuple(targets.shape)}"
            )
    else:
        if num_classes is None:
            raise ValueError("num_classes is required for class-index targets (or pass like=)")
        class_dim = normalize_class_dim(class_dim, targets.dim() + 1)
    idx = targets.long()
    if validate and idx.numel() > 0:
        # One clamp decides the common case (no ignored labels, all in range).
        in_range = torch.equal(idx.clamp(0, num_classes - 1), idx)
        bad = None if in_range else (idx != ignore_index) & ((idx < 0) | (idx >= num_classes))
        if bad is not None and bool(bad.any()):
            first = int(idx[bad][0])
            raise ValueError(
                f"class index {first} is out of range for num_classes={num_classes} "
                f"(valid: 0..{num_classes - 1}, or ignore_index={ignore_index})"
            )
    known_sample = idx != ignore_index
    classes = torch.arange(num_classes, device=idx.device)
    # (N, *, C) -> class axis at class_dim: comparison, not one_hot, so no host sync.
    positive = (idx.unsqueeze(-1) == classes).movedim(-1, class_dim)
    known = known_sample.unsqueeze(class_dim).expand_as(positive)
    return Targets(
        positive=positive,
        known=known,
        num_classes=num_classes,
        class_dim=class_dim,
        encoding="index",
        indices=idx,
    )


def _from_dense(
    targets: Tensor,
    encoding: Encoding,
    num_classes: int | None,
    class_dim: int,
    like: Tensor | None,
    validate: bool,
) -> Targets:
    class_dim = normalize_class_dim(class_dim, targets.dim())
    if like is not None and targets.shape != like.shape:
        raise ValueError(
            f"{encoding} targets must have the logits' shape {tuple(like.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    c = targets.shape[class_dim]
    if num_classes is not None and c != num_classes:
        raise ValueError(
            f"num_classes={num_classes} does not match the targets' class axis "
            f"(class_dim={class_dim}) of length {c}"
        )
    if encoding == "soft" and not targets.is_floating_point():
        targets = targets.float()
    if targets.is_floating_point():
        return _from_float(targets, encoding, c, class_dim, validate)
    if targets.dtype == torch.bool:
        if validate and targets.numel() > 0:
            _validate_dense(targets, encoding)
        return Targets(
            positive=targets,
            known=torch.ones_like(targets),
            num_classes=c,
            class_dim=class_dim,
            encoding=encoding,
            indices=None,
        )
    # Integer multi-hot labels: one float32 copy, which the checks and the masks read. int64
    # comparisons and clamps cost several times their float32 versions on the CPU, and the
    # 0/1 masks of the policies come straight from float comparisons (Targets.mask_as). Labels
    # in [-1, 1] after the cast are exactly the integers -1, 0 and 1 (an int64 outside rounds
    # to a float outside).
    on_cpu = targets.device.type == "cpu" and not _tracing()
    dense = torch.empty(targets.shape).copy_(targets) if on_cpu else targets.float()
    if validate and targets.numel() > 0 and not torch.equal(dense.clamp(-1.0, 1.0), dense):
        _validate_dense(targets, encoding)  # raises, with the message of the encoding
    return Targets(
        positive=None,
        known=None,
        num_classes=c,
        class_dim=class_dim,
        encoding=encoding,
        indices=None,
        _dense=dense,
    )


def _from_float(
    targets: Tensor, encoding: Encoding, num_classes: int, class_dim: int, validate: bool
) -> Targets:
    """Float labels (soft, or multi-hot as BCE takes them): as cheap as integer ones."""
    if (
        validate
        and targets.numel() > 0
        and not torch.equal(_valid_form(targets, encoding), targets)
    ):
        _validate_dense(targets, encoding)  # raises, with the message of the encoding
    # known, positive and values follow from the labels when first read (see
    # Targets.float_labels): a policy that reads only some of them never pays for the others.
    return Targets(
        positive=None,
        known=None,
        num_classes=num_classes,
        class_dim=class_dim,
        encoding=encoding,
        indices=None,
        float_labels=targets,
    )


def _valid_form(labels: Tensor, encoding: Encoding) -> Tensor:
    """What float labels would be if they were valid: equal to ``labels`` iff they are.

    min(max(x, -1), sign(x)) is x for x in [0, 1] and for -1, and differs from x for every other
    value: above 1 (-> 1), below -1 (-> -1), in (-1, 0) (-> -1), NaN (never equal); multi-hot
    labels are truncated first, so that only whole values stay. Three cheap passes: no bool
    tensor and no torch.where, several times slower than arithmetic on the CPU.
    """
    _, _, _, minus_one = _float_constants(labels)
    x = labels.trunc() if encoding == "multi_hot" else labels
    return torch.minimum(x.clamp(min=minus_one), labels.sign())


def _validate_dense(targets: Tensor, encoding: Encoding) -> None:
    """Raise unless multi-hot values are in {-1, 0, 1} / soft values in [0, 1] or -1."""
    if not targets.is_floating_point() and not targets.is_signed():
        # -1 does not exist in an unsigned dtype: uint8 255 == -1 would compare True.
        targets = targets.to(torch.int16)
    if encoding == "multi_hot" and not targets.is_floating_point():
        # Integer labels: in {-1, 0, 1} iff clamping to [-1, 1] changes nothing (two operators;
        # 0-d CPU bounds: Python ints would add a conversion per call).
        on_cpu = targets.device.type == "cpu"
        clamped = targets.clamp(_MINUS_ONE, _ONE) if on_cpu else targets.clamp(-1, 1)
        if torch.equal(clamped, targets):
            return
        raise ValueError(
            "multi_hot targets must contain only 0, 1 and -1 (unknown); for "
            "probabilities use a float tensor (soft labels)"
        )
    # Float labels (reached from _from_float when its fast check failed): the full check.
    if encoding == "multi_hot":
        ok = (targets == 0) | (targets == 1) | (targets == -1)
        if not bool(ok.all()):
            raise ValueError(
                "multi_hot targets must contain only 0, 1 and -1 (unknown); for "
                "probabilities use a float tensor (soft labels)"
            )
        return
    ok = ((targets >= 0) & (targets <= 1)) | (targets == -1)
    if not bool(ok.all()):
        raise ValueError(
            "soft targets must be probabilities in [0, 1], or -1 for unknown labels "
            "(NaN and inf are not labels)"
        )


def _check_existing(
    t: Targets, *, num_classes: int | None, class_dim: int, like: Tensor | None
) -> Targets:
    if class_dim % len(t.shape) != t.class_dim:
        raise ValueError(
            f"class_dim={class_dim} does not match the given Targets (class_dim={t.class_dim})"
        )
    if num_classes is not None and num_classes != t.num_classes:
        raise ValueError(
            f"num_classes={num_classes} does not match the given Targets ({t.num_classes} classes)"
        )
    if like is not None and like.shape != t.shape:
        raise ValueError(
            f"Targets of shape {tuple(t.shape)} do not match logits of shape {tuple(like.shape)}"
        )
    return t
