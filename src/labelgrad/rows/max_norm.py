"""Per-class MaxNorm: after a step, the weight rows of the classes that moved are projected onto
a ball of their class's radius (Alshammari et al. 2022, "Long-tailed recognition via weight
balancing": projected gradient descent on the classifier's weight rows).

Only label-owned tensors with more than one dimension are projected (a Linear head's weight,
each class's slice measured on its own); 1-D tensors such as the bias are not, as in the
authors' ``MaxNorm_via_PGD``, which gives the bias an infinite threshold. A row inside its ball
is multiplied by exactly 1, so it keeps its bits; there is no host synchronisation and no loop
over classes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from labelgrad.rows.label_param import LabelParam

__all__ = ["is_projected", "project", "row_norms", "wide_dtype"]


def wide_dtype(device: torch.device) -> torch.dtype:
    """The dtype row norms are computed in: float64 (no overflow of the squares of float32 or
    bfloat16 entries), float32 where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def is_projected(lp: LabelParam) -> bool:
    """Whether MaxNorm applies to ``lp``: a class's slice of it is a vector, not a scalar."""
    return lp.param.dim() > 1


def row_norms(param: Tensor, class_dim: int = 0) -> Tensor:
    """The (C,) L2 norms of the class slices of ``param`` along ``class_dim``, in the wide dtype.

    Float64 slices are scaled by a power of two near their largest entry first, so that entries
    such as 1e200 or 1e-200, whose squares leave float64's range, still give their norm.

    Example:
        >>> import torch
        >>> row_norms(torch.tensor([[3.0, 4.0], [0.0, 0.0]])).tolist()
        [5.0, 0.0]
        >>> big = torch.tensor([[3.0, 4.0]], dtype=torch.float64) * 2.0**1000  # squares overflow
        >>> row_norms(big).tolist() == [5.0 * 2.0**1000]
        True
    """
    p = param.detach()
    dims = [d for d in range(p.dim()) if d != class_dim]
    wide = wide_dtype(p.device)
    if p.dtype != torch.float64 or not dims:
        norm: Tensor = torch.linalg.vector_norm(p, dim=dims, dtype=wide)
        return norm
    # A power of two near the largest entry: dividing and multiplying by it is exact, so rows
    # in the ordinary range get exactly the unscaled norm.
    top = p.abs().amax(dim=dims, keepdim=True)
    scale = torch.ldexp(torch.ones_like(top), torch.frexp(top).exponent)
    scaled: Tensor = torch.linalg.vector_norm(p / scale, dim=dims) * scale.reshape(-1)
    return scaled


def project(lp: LabelParam, radius: Tensor, moving: Tensor | None) -> None:
    """Project the ``moving`` class slices of ``lp.param`` (every slice: None) onto the balls of
    ``radius`` ((C,), wide dtype, on the parameter's device) in place.

    The factor is ``radius / norm`` where the norm exceeds the radius and exactly 1 elsewhere
    (rows inside, rows that did not move, rows with a NaN norm), so those rows keep their bits.
    """
    norm = row_norms(lp.param, lp.class_dim)
    outside = norm > radius
    if moving is not None:
        outside = outside & moving
    factor = torch.where(outside, radius / norm, torch.ones_like(norm))
    p = lp.param
    if p.element_size() >= 4:
        p.mul_(lp.per_class(factor.to(p.dtype)))
    else:
        # Half precision: one rounding of the exact product, not two (factor, then product).
        p.copy_(p.float() * lp.per_class(factor.float()))
