"""Separate optimizers for groups of classes, stepped only when their classes occur."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from labelgrad._distributed import CheckedReducer
from labelgrad._validation import as_class_set
from labelgrad.rows.rules import present_classes
from labelgrad.targets import Encoding, TargetsLike

__all__ = ["Router", "route"]


class Router:
    """Optimizers keyed by name, each owning a group of classes; see :func:`route`.

    Attributes:
        optimizers: name -> optimizer, in the order given.
        classes: name -> the sorted int64 class indices of that group.
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
    ) -> None:
        if not isinstance(groups, Mapping) or not groups:
            raise TypeError("groups must be a non-empty dict {name: (optimizer, classes)}")
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.classes: dict[str, Tensor] = {}
        for name, entry in groups.items():
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise TypeError(f"groups[{name!r}] must be a pair (optimizer, classes)")
            opt, classes = entry
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(
                    f"groups[{name!r}]: expected a torch.optim.Optimizer, got {type(opt).__name__}"
                )
            idx = as_class_set(classes, f"groups[{name!r}] classes", num_classes=num_classes)
            if idx.numel() == 0:
                raise ValueError(f"groups[{name!r}] has no classes")
            self.optimizers[name] = opt
            self.classes[name] = idx
        largest = max(int(idx.max()) for idx in self.classes.values()) + 1
        if num_classes is None:
            num_classes = largest
        self.num_classes = num_classes
        owner = torch.full((num_classes,), -1, dtype=torch.long)
        names = list(self.optimizers)
        for k, name in enumerate(names):
            clash = owner[self.classes[name]]
            if bool((clash >= 0).any()):
                other = names[int(clash[clash >= 0][0])]
                both = sorted(set(self.classes[name].tolist()) & set(self.classes[other].tolist()))
                raise ValueError(
                    f"groups: classes {both} are in both {other!r} and {name!r}; "
                    "each class belongs to one optimizer"
                )
            owner[self.classes[name]] = k
        for name, opt in self.optimizers.items():
            inner = getattr(opt, "num_classes", None)
            if callable(getattr(opt, "observe", None)) and inner != num_classes:
                raise ValueError(
                    f"groups[{name!r}]: its optimizer observes targets over {inner} classes but "
                    f"the router has num_classes={num_classes}; both must use the same class ids"
                )
        seen: dict[int, str] = {}
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in seen and seen[id(p)] != name:
                        raise ValueError(
                            f"groups: a parameter of shape {tuple(p.shape)} is owned by the "
                            f"optimizers of both {seen[id(p)]!r} and {name!r}"
                        )
                    seen[id(p)] = name
        # membership (K, C): which group owns which class; built once, on the CPU.
        self._membership = torch.zeros(len(names), num_classes, dtype=torch.bool)
        for k, name in enumerate(names):
            self._membership[k, self.classes[name]] = True
        self._present: Tensor | None = None
        self._present_reducer = CheckedReducer("the present classes of route")

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.optimizers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.optimizers)

    def __len__(self) -> int:
        return len(self.optimizers)

    def __repr__(self) -> str:
        groups = ", ".join(
            f"{name}: {type(opt).__name__} x {self.classes[name].numel()} classes"
            for name, opt in self.optimizers.items()
        )
        return f"Router({groups})"

    def observe(
        self,
        targets: TargetsLike,
        *,
        class_dim: int = 1,
        encoding: Encoding | None = None,
        ignore_index: int = -100,
    ) -> None:
        """Add the classes with a positive label in ``targets`` to this step's present classes.

        Routed optimizers that observe targets themselves (a :class:`labelgrad.RowRules`) observe
        them too. ``class_dim``, ``encoding`` and ``ignore_index`` are passed on to
        :meth:`labelgrad.Targets.coerce`.
        """
        hit = present_classes(
            targets,
            self.num_classes,
            class_dim=class_dim,
            encoding=encoding,
            ignore_index=ignore_index,
        )
        self._present = (
            hit if self._present is None else self._present | hit.to(self._present.device)
        )
        for opt in self.optimizers.values():
            observe = getattr(opt, "observe", None)
            if callable(observe):
                observe(targets, class_dim=class_dim, encoding=encoding, ignore_index=ignore_index)

    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        targets: TargetsLike | None = None,
    ) -> Any:
        """Step the optimizers whose classes occur in the targets observed since the last step.

        Deciding which optimizers to call reads the (K,) "group present" vector on the host:
        one synchronisation per step (a Python ``if`` cannot wait on the device). The optimizers
        that do not step keep their parameters and state bitwise unchanged.

        Returns:
            The closure's loss (evaluated once), or None.

        Raises:
            RuntimeError: no targets were observed since the last step.
        """
        if targets is not None:
            self.observe(targets)
        if self._present is None:
            raise RuntimeError(
                "route needs the batch's targets: call router.observe(targets) or "
                "router.step(targets=targets)"
            )
        present = self._present
        self._present = None
        # Under DDP every rank must step the same optimizers: the union over ranks.
        present = self._present_reducer.any(present)
        # The one host read per step.
        hits = (self._membership.to(present.device) & present).any(dim=1).tolist()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for hit, opt in zip(hits, self.optimizers.values()):
            if hit:
                opt.step()
            else:
                # The window of an optimizer that observes closes here as well.
                clear = getattr(opt, "clear_observed", None)
                if callable(clear):
                    clear()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``zero_grad`` of every routed optimizer."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """name -> that optimizer's state dict."""
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` returned."""
        missing = set(self.optimizers) ^ set(state_dict)
        if missing:
            raise ValueError(f"state_dict: group names differ: {sorted(missing)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])


def route(
    groups: Mapping[str, tuple[torch.optim.Optimizer, object]],
    *,
    num_classes: int | None = None,
) -> Router:
    """Separate optimizers for groups of classes: each steps only when its classes occur.

    Each group is ``name: (optimizer, classes)``; the optimizer may own whole modules (a head per
    group) or anything else. ``step(targets=...)`` steps the optimizers with at least one class
    with a positive label in the targets; the others keep their parameters and state bitwise
    unchanged (their gradients are left in place; ``zero_grad`` clears them).

    Args:
        groups: name -> (optimizer, classes). Class groups must not overlap, nor may two
            optimizers own the same parameter.
        num_classes: the number of classes in the targets; defaults to the largest routed class
            plus one.

    Returns:
        A :class:`Router`.

    Example:
        >>> import torch, labelgrad as lg
        >>> head_a, head_b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
        >>> router = lg.route({
        ...     "frequent": (torch.optim.SGD(head_a.parameters(), lr=0.1), [0, 1]),
        ...     "rare": (torch.optim.Adam(head_b.parameters(), lr=1e-3), [2, 3]),
        ... })
        >>> x = torch.randn(5, 4)
        >>> torch.cat([head_a(x), head_b(x)], dim=1).sum().backward()
        >>> before = head_b.weight.detach().clone()
        >>> router.step(targets=torch.tensor([0, 1, 1, 0, 0]))  # no rare class: "rare" rests
        >>> torch.equal(head_b.weight, before)
        True
    """
    return Router(groups, num_classes=num_classes)
