"""A label-owned parameter: a tensor whose slices along one axis belong to the classes."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["LabelParam"]


@dataclass(frozen=True)
class LabelParam:
    """A label-owned parameter: its slices along ``class_dim`` belong to the classes in order.

    Example:
        >>> import torch
        >>> lp = LabelParam(torch.zeros(3, 2), class_dim=0)
        >>> lp.per_class(torch.tensor([1.0, 2.0, 3.0])).shape
        torch.Size([3, 1])
    """

    param: Tensor
    class_dim: int

    def per_class(self, values: Tensor) -> Tensor:
        """Reshape a (C,) vector so that it broadcasts along this parameter's class axis."""
        shape = [1] * self.param.dim()
        shape[self.class_dim] = -1
        out = values.reshape(shape)
        mesh = getattr(self.param, "device_mesh", None)
        if mesh is not None and not isinstance(out, type(self.param)):
            # FSDP2 / DTensor parameter: a replicated DTensor broadcasts against any sharding
            # of the parameter without communication (each rank uses its own rows).
            from torch.distributed.tensor import DTensor, Replicate

            out = DTensor.from_local(out, mesh, [Replicate()] * mesh.ndim, run_check=False)
        return out
