"""Separate optimizers for groups of classes, stepped only when their classes occur."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from labelgrad._validation import as_class_set
from labelgrad.rows.families import step_needs_closure
from labelgrad.rows.observer import ClassWindow, LabelObserver, ObservesLabels
from labelgrad.targets import Encoding, TargetsLike

__all__ = ["Router", "route"]

_META = "__labelgrad_route__"  # the state-dict key of the router's own entries


class Router(ObservesLabels):
    """Optimizers keyed by name, each owning a group of classes; see :func:`route`.

    It is a :class:`labelgrad.rows.observer.LabelObserver`: :meth:`observe` (and so
    ``step(targets=...)``) passes the targets on to every optimizer it steps that observes labels
    itself (a :class:`labelgrad.RowRules`, routed or in ``always``).
    It can be stepped through ``torch.amp.GradScaler``: ``scaler.step(router)`` unscales the
    gradients of every optimizer (routed and ``always``), skips the whole step on inf/NaN, and
    otherwise calls :meth:`step` with the targets observed since :meth:`zero_grad`.

    Attributes:
        optimizers: name -> optimizer, in the order given.
        classes: name -> the sorted int64 class indices of that group (a copy).
        always: optimizers stepped at every step (e.g. a shared trunk's).
        num_classes: the number of classes the targets carry.

    Example:
        >>> import torch, labelgrad as lg
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
        >>> router = lg.Router({"ab": (torch.optim.SGD(a.parameters(), lr=0.1), [0, 1]),
        ...                     "c": (torch.optim.SGD(b.parameters(), lr=0.1), [2])})
        >>> list(router), router.num_classes
        (['ab', 'c'], 3)
    """

    def __init__(
        self,
        groups: Mapping[str, tuple[torch.optim.Optimizer, object]],
        *,
        num_classes: int | None = None,
        always: Iterable[torch.optim.Optimizer] | None = None,
    ) -> None:
        if not isinstance(groups, Mapping) or not groups:
            raise TypeError("groups must be a non-empty dict {name: (optimizer, classes)}")
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._classes: dict[str, Tensor] = {}
        for name, entry in groups.items():
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise TypeError(f"groups[{name!r}] must be a pair (optimizer, classes)")
            opt, classes = entry
            _check_optimizer(opt, f"groups[{name!r}]")
            idx = as_class_set(classes, f"groups[{name!r}] classes", num_classes=num_classes)
            if idx.numel() == 0:
                raise ValueError(f"groups[{name!r}] has no classes")
            self.optimizers[name] = opt
            self._classes[name] = idx
        self.always = _always(always)
        largest = max(int(idx.max()) for idx in self._classes.values()) + 1
        self.num_classes = largest if num_classes is None else num_classes
        self._check_disjoint()
        # membership (K, C): which group owns which class; built once, on the CPU.
        names = list(self.optimizers)
        self._membership = torch.zeros(len(names), self.num_classes, dtype=torch.bool)
        for k, name in enumerate(names):
            self._membership[k, self._classes[name]] = True
        self._window = ClassWindow(self.num_classes, what="route")

    @property
    def classes(self) -> dict[str, Tensor]:
        """name -> the sorted int64 class indices of that group (copies: the groups are fixed
        at construction, editing these does not move a class)."""
        return {name: idx.clone() for name, idx in self._classes.items()}

    def _check_disjoint(self) -> None:
        """Classes belong to one group; parameters to one optimizer; observers agree on C."""
        owner: dict[int, str] = {}
        for name, idx in self._classes.items():
            for c in idx.tolist():
                if c in owner:
                    both = sorted(set(self._classes[owner[c]].tolist()) & set(idx.tolist()))
                    raise ValueError(
                        f"groups: classes {both} are in both {owner[c]!r} and {name!r}; "
                        "each class belongs to one optimizer"
                    )
                owner[c] = name
        for name, observer in self._observers():
            inner = getattr(observer, "num_classes", None)
            if inner != self.num_classes:
                raise ValueError(
                    f"{name}: its optimizer observes targets over {inner} classes but "
                    f"the router has num_classes={self.num_classes}; both must use the same "
                    "class ids"
                )
        labelled = [*self.optimizers.items()]
        labelled += [(f"always[{k}]", opt) for k, opt in enumerate(self.always)]
        seen: dict[int, str] = {}
        for name, opt in labelled:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in seen and seen[id(p)] != name:
                        raise ValueError(
                            f"groups: a parameter of shape {tuple(p.shape)} is owned by the "
                            f"optimizers of both {seen[id(p)]!r} and {name!r}"
                        )
                    seen[id(p)] = name

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.optimizers)

    def __len__(self) -> int:
        return len(self.optimizers)

    def __repr__(self) -> str:
        groups = ", ".join(
            f"{name}: {type(opt).__name__} x {self._classes[name].numel()} classes"
            for name, opt in self.optimizers.items()
        )
        always = ", ".join(type(opt).__name__ for opt in self.always)
        return f"Router({groups}{'; always: ' + always if always else ''})"

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The param groups of every optimizer (routed, then ``always``): what
        ``GradScaler.unscale_`` walks."""
        opts = [*self.optimizers.values(), *self.always]
        return [group for opt in opts for group in opt.param_groups]

    def _observers(self) -> list[tuple[str, LabelObserver]]:
        """(name, optimizer) of every routed and ``always`` optimizer that observes labels."""
        named = [(f"groups[{name!r}]", opt) for name, opt in self.optimizers.items()]
        named += [(f"always[{k}]", opt) for k, opt in enumerate(self.always)]
        return [(name, opt) for name, opt in named if isinstance(opt, LabelObserver)]

    def _observe_more(self, targets: TargetsLike, kwargs: dict[str, Any]) -> None:
        """Every optimizer this router steps that observes labels itself (a RowRules, routed or
        ``always``) observes them too."""
        for _, observer in self._observers():
            observer.observe(targets, **kwargs)

    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        targets: TargetsLike | None = None,
        class_dim: int = 1,
        encoding: Encoding | None = None,
        like: Tensor | None = None,
        ignore_index: int = -100,
    ) -> Any:
        """Step the optimizers whose classes occur in the targets observed since the last step,
        and every ``always`` optimizer.

        Deciding which optimizers to call reads the (K,) "group present" vector on the host:
        one synchronisation per step (a Python ``if`` cannot wait on the device). The optimizers
        that do not step keep their parameters and state bitwise unchanged. ``targets`` and the
        keywords after it are as in :meth:`observe`.

        Returns:
            The closure's loss (evaluated once), or None.

        Raises:
            RuntimeError: no targets were observed since the last step.
        """
        if targets is not None:
            self.observe(
                targets,
                class_dim=class_dim,
                encoding=encoding,
                like=like,
                ignore_index=ignore_index,
            )
        if not self._window.observed:
            raise RuntimeError(
                "route needs the batch's targets: call router.observe(targets) or "
                "router.step(targets=targets)"
            )
        # Under DDP every rank must step the same optimizers: the union over ranks.
        present = self._window.union_over_ranks()
        self._window.clear()
        # The one host read per step.
        hits = (self._membership.to(present.device) & present).any(dim=1).tolist()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.always:
            opt.step()
        for hit, opt in zip(hits, self.optimizers.values()):
            if hit:
                opt.step()
            else:
                # The window of an optimizer that observes closes here as well.
                if isinstance(opt, LabelObserver):
                    opt.clear_observed()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``zero_grad`` of every optimizer; also forgets the classes observed so far (a step
        that ``GradScaler`` skipped must not carry its batch's classes into the next one)."""
        for opt in [*self.optimizers.values(), *self.always]:
            opt.zero_grad(set_to_none=set_to_none)
        self._window.clear()

    def state_dict(self) -> dict[str, Any]:
        """name -> that optimizer's state dict, and the ``always`` optimizers' state dicts, every
        optimizer's type, each group's classes and ``num_classes`` under the key
        ``"__labelgrad_route__"``."""
        out: dict[str, Any] = {name: opt.state_dict() for name, opt in self.optimizers.items()}
        out[_META] = {
            "types": {name: _type_name(opt) for name, opt in self.optimizers.items()},
            "classes": {name: idx.tolist() for name, idx in self._classes.items()},
            "num_classes": self.num_classes,
            "always_types": [_type_name(opt) for opt in self.always],
            "always": [opt.state_dict() for opt in self.always],
        }
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` returned.

        Raises:
            ValueError: the group names, the number of ``always`` optimizers, an optimizer's
                type, a group's classes or ``num_classes`` differ from this router's (to move
                classes between groups on resume, load each optimizer's own state:
                ``router[name].load_state_dict(state_dict[name])``).
        """
        sd = dict(state_dict)
        meta = sd.pop(_META, None)
        missing = set(self.optimizers) ^ set(sd)
        if missing:
            raise ValueError(f"state_dict: group names differ: {sorted(missing)}")
        if meta is not None:
            mine = {name: _type_name(opt) for name, opt in self.optimizers.items()}
            for name, saved in dict(meta.get("types", {})).items():
                if name in mine and saved != mine[name]:
                    raise ValueError(
                        f"state_dict: group {name!r} was saved from {saved}, this router's is "
                        f"{mine[name]}; load it into a router with the same optimizer types"
                    )
            self._check_saved_classes(meta)
            saved_always = list(meta.get("always_types", []))
            if saved_always != [_type_name(opt) for opt in self.always]:
                raise ValueError(
                    f"state_dict: saved with always={saved_always}, this router has "
                    f"always={[_type_name(opt) for opt in self.always]}"
                )
        elif self.always:
            raise ValueError("state_dict: has no state for this router's always= optimizers")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(sd[name])
        if meta is not None:
            for opt, saved_sd in zip(self.always, meta["always"]):
                opt.load_state_dict(saved_sd)

    def _check_saved_classes(self, meta: Mapping[str, Any]) -> None:
        """The saved groups own the same classes out of the same C (states before 0.3 have no
        record of them and load as before)."""
        saved_c = meta.get("num_classes")
        if saved_c is not None and saved_c != self.num_classes:
            raise ValueError(
                f"state_dict: saved with num_classes={saved_c}, this router has "
                f"num_classes={self.num_classes}"
            )
        for name, saved in dict(meta.get("classes", {})).items():
            mine = self._classes[name].tolist() if name in self._classes else list(saved)
            if list(saved) != mine:
                raise ValueError(
                    f"state_dict: group {name!r} was saved owning classes {list(saved)}, this "
                    f"router's owns {mine}; to regroup classes on resume, load each optimizer "
                    "itself: router[name].load_state_dict(state_dict[name])"
                )


def _type_name(opt: torch.optim.Optimizer) -> str:
    """The optimizer's type, looking through a RowRules to the optimizer it wraps."""
    inner = getattr(opt, "optimizer", None)
    name = type(opt).__name__
    return f"{name}({_type_name(inner)})" if isinstance(inner, torch.optim.Optimizer) else name


def _check_optimizer(opt: object, name: str) -> None:
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"{name}: expected a torch.optim.Optimizer, got {type(opt).__name__}")
    if step_needs_closure(opt):
        raise TypeError(
            f"{name}: {type(opt).__name__}.step() requires a closure (LBFGS-style); route "
            "steps optimizers without one"
        )


def _always(always: Iterable[torch.optim.Optimizer] | None) -> list[torch.optim.Optimizer]:
    if always is None:
        return []
    if isinstance(always, torch.optim.Optimizer):
        raise TypeError("always must be a list of optimizers, e.g. always=[trunk_opt]")
    out = list(always)
    for k, opt in enumerate(out):
        _check_optimizer(opt, f"always[{k}]")
    return out


def route(
    groups: Mapping[str, tuple[torch.optim.Optimizer, object]],
    *,
    num_classes: int | None = None,
    always: Iterable[torch.optim.Optimizer] | None = None,
) -> Router:
    """Separate optimizers for groups of classes: each steps only when its classes occur.

    Each group is ``name: (optimizer, classes)``; the optimizer may own whole modules (a head per
    group) or anything else. ``step(targets=...)`` steps the optimizers with at least one class
    with a positive label in the targets; the others keep their parameters and state bitwise
    unchanged (their gradients are left in place; ``zero_grad`` clears them). The optimizers in
    ``always`` (a shared trunk's) step every time.

    Args:
        groups: name -> (optimizer, classes). Class groups must not overlap, nor may two
            optimizers (``always`` included) own the same parameter.
        num_classes: the number of classes in the targets; defaults to the largest routed class
            plus one.
        always: optimizers stepped at every step, whatever the labels.

    Returns:
        A :class:`Router`.

    Example:
        >>> import torch, labelgrad as lg
        >>> trunk = torch.nn.Linear(4, 4)
        >>> head_a, head_b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
        >>> router = lg.route(
        ...     {
        ...         "frequent": (torch.optim.SGD(head_a.parameters(), lr=0.1), [0, 1]),
        ...         "rare": (torch.optim.Adam(head_b.parameters(), lr=1e-3), [2, 3]),
        ...     },
        ...     always=[torch.optim.SGD(trunk.parameters(), lr=0.1)],
        ... )
        >>> h = trunk(torch.randn(5, 4))
        >>> torch.cat([head_a(h), head_b(h)], dim=1).sum().backward()
        >>> before = head_b.weight.detach().clone(), trunk.weight.detach().clone()
        >>> router.step(targets=torch.tensor([0, 1, 1, 0, 0]))  # no rare class: "rare" rests
        >>> torch.equal(head_b.weight, before[0]), torch.equal(trunk.weight, before[1])
        (True, False)
    """
    return Router(groups, num_classes=num_classes, always=always)
