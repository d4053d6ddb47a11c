"""The (N, S, C) layout: a tensor of logits' shape with the class axis last and every other
non-sample axis flattened into S positions.

Policies see gradients in this layout, ``per_label_losses`` computes in it, and
:meth:`labelgrad.Targets.class_last` returns targets in it; one helper (and its inverse) so that
all three agree, the cheap view included.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_back", "class_last"]


def class_last(x: Tensor, class_dim: int, n: int, s: int, c: int) -> Tensor:
    """``x`` as (N, S, C): one view in the common layouts (class axis last, contiguous).

    Example:
        >>> import torch
        >>> x = torch.arange(24).reshape(2, 3, 4)  # (N, C, T)
        >>> class_last(x, 1, 2, 4, 3)[1, 0].tolist()  # sample 1, position 0: its 3 classes
        [12, 16, 20]
    """
    if class_dim == x.dim() - 1 and x.is_contiguous():
        return x.view(n, s, c)
    return x.movedim(class_dim, -1).reshape(n, s, c)


def class_back(out: Tensor, class_dim: int, shape: torch.Size) -> Tensor:
    """Undo :func:`class_last`: (N, S, C) back to ``shape`` with the classes on ``class_dim``.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 3, 4)
        >>> torch.equal(class_back(class_last(x, 1, 2, 4, 3), 1, x.shape), x)
        True
    """
    if class_dim == len(shape) - 1 and out.is_contiguous():
        return out.view(shape)
    moved = shape[:class_dim] + shape[class_dim + 1 :] + shape[class_dim : class_dim + 1]
    return out.reshape(moved).movedim(-1, class_dim)
