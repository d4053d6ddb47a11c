"""Forward hooks that record each layer's input and output, for the sample-Gramian engine.

``lg.aggregation.track(trunk)`` once before training returns the :class:`Tracker`; the module
owns it (through its forward hooks, not a global registry), and
``lg.aggregate_backward(losses, shared=trunk, ...)`` finds it there, or takes it explicitly
with ``tracker=``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["Tracker", "track"]

_MAX_CALLS = 4


class Tracker:
    """Forward hooks that record the input and output of every layer of a module.

    Made by :func:`track`. Each record holds references to tensors autograd keeps anyway (the
    input of a Linear or Conv2d is saved for its backward); the output reference costs nothing
    either while the graph is alive. Records are kept only while gradients are enabled.

    Example:
        >>> import torch, labelgrad as lg
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
        >>> tracker = lg.aggregation.track(net)
        >>> _ = net(torch.randn(4, 2))
        >>> [type(m).__name__ for m in tracker.calls]
        ['Linear']
        >>> tracker.remove()
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.calls: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}
        self._handles: list[RemovableHandle] = []
        for sub in module.modules():
            # The root always carries a hook: that is how the module owns its tracker (of()).
            if sub is module or any(True for _ in sub.parameters(recurse=False)):
                self._handles.append(sub.register_forward_hook(self._record))

    @staticmethod
    def of(module: object) -> Tracker | None:
        """The tracker :func:`track` attached to ``module``, or None.

        Example:
            >>> import torch, labelgrad as lg
            >>> net = torch.nn.Linear(2, 3)
            >>> lg.aggregation.Tracker.of(net) is None
            True
            >>> tracker = lg.aggregation.track(net)
            >>> lg.aggregation.Tracker.of(net) is tracker
            True
            >>> tracker.remove()
        """
        if not isinstance(module, nn.Module):
            return None
        for hook in module._forward_hooks.values():
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, Tracker) and owner.module is module:
                return owner
        return None

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled() or not inputs or not isinstance(inputs[0], Tensor):
            return
        if module is self.module and not any(True for _ in module.parameters(recurse=False)):
            return
        if not isinstance(output, Tensor):
            return
        calls = self.calls.setdefault(module, [])
        calls.append((inputs[0].detach(), output))
        del calls[:-_MAX_CALLS]

    def remove(self) -> None:
        """Remove the hooks and forget the records."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.calls.clear()


def track(module: nn.Module) -> Tracker:
    """Record layer inputs and outputs of ``module`` for the sample-Gramian engine.

    Call once before training; ``lg.aggregate_backward(losses, shared=module, ...)`` then uses
    the records of the current forward pass (or pass ``tracker=`` explicitly). Tracking the same
    module again returns its tracker.

    Example:
        >>> import torch, labelgrad as lg
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> trunk, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 6)
        >>> tracker = lg.aggregation.track(trunk)
        >>> x, y = torch.randn(10, 4), torch.randint(0, 6, (10,))
        >>> groups = [[0, 1, 2], [3, 4, 5]]
        >>> losses = lg.per_label_losses(head(trunk(x).relu()), y, loss="ce", groups=groups)
        >>> class Mean:
        ...     def weights(self, G):
        ...         return torch.full((G.shape[0],), 1.0 / G.shape[0])
        >>> lg.aggregate_backward(losses, shared=trunk, aggregator=Mean()).engine
        'sample_gramian'
        >>> tracker.remove()
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"track() needs an nn.Module, got {type(module).__name__}")
    return Tracker.of(module) or Tracker(module)
