"""The aggregator interface: a weighting of the K x K Gramian, or a map of the Jacobian."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "Aggregator",
    "JacobianAggregator",
    "check_gramian",
    "check_jacobian",
    "optional_vector",
    "per_row_vector",
]


def _host_checkable(t: Tensor) -> bool:
    # Value checks read the data on the host: free on CPU, a device sync elsewhere (skipped there).
    return t.device.type == "cpu"


def check_gramian(gramian: object, /) -> Tensor:
    """Validate a Gramian: a floating 2-D square tensor, finite where that is checkable for free.

    Finiteness is checked on CPU tensors only: on an accelerator the check would cost a host
    sync on every step, so a non-finite Gramian there propagates into non-finite weights (which a
    ``GradScaler`` then sees, as it should).

    Args:
        gramian: the candidate Gramian ``G = J J^T`` of shape (K, K).

    Returns:
        ``gramian`` unchanged.

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: not 2-D and square, empty, or (on CPU) not finite.

    Example:
        >>> import torch
        >>> check_gramian(torch.eye(3)).shape
        torch.Size([3, 3])
    """
    if not isinstance(gramian, Tensor):
        raise TypeError(f"the Gramian must be a torch.Tensor, got {type(gramian).__name__}")
    if not gramian.is_floating_point():
        raise TypeError(f"the Gramian must have a floating dtype, got {gramian.dtype}")
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(
            f"the Gramian must be a square (K, K) matrix, got shape {tuple(gramian.shape)}"
        )
    if gramian.shape[0] == 0:
        raise ValueError("the Gramian must have K >= 1 rows, got shape (0, 0)")
    if _host_checkable(gramian) and not bool(gramian.isfinite().all()):
        raise ValueError("the Gramian has non-finite entries (inf or nan)")
    return gramian


def check_jacobian(jacobian: object, /) -> Tensor:
    """Validate a Jacobian: a floating (K, P) tensor with K >= 1, finite where checkable for free.

    Example:
        >>> import torch
        >>> check_jacobian(torch.ones(2, 5)).shape
        torch.Size([2, 5])
    """
    if not isinstance(jacobian, Tensor):
        raise TypeError(f"the Jacobian must be a torch.Tensor, got {type(jacobian).__name__}")
    if not jacobian.is_floating_point():
        raise TypeError(f"the Jacobian must have a floating dtype, got {jacobian.dtype}")
    if jacobian.dim() != 2 or jacobian.shape[0] == 0:
        raise ValueError(
            f"the Jacobian must be a (K, P) matrix with K >= 1, got shape {tuple(jacobian.shape)}"
        )
    if _host_checkable(jacobian) and not bool(jacobian.isfinite().all()):
        raise ValueError("the Jacobian has non-finite entries (inf or nan)")
    return jacobian


def optional_vector(value: object, name: str) -> Tensor | None:
    """A detached copy of an optional (K,) constructor argument, or raise naming ``name``.

    Example:
        >>> import torch
        >>> optional_vector(torch.ones(3), "pref_vector")
        tensor([1., 1., 1.])
    """
    if value is None:
        return None
    if not isinstance(value, Tensor) or value.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of K values or None")
    return value.detach().clone()


def per_row_vector(
    vector: Tensor | None,
    k: int,
    default: float,
    name: str,
    *,
    like: Tensor,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``vector`` on ``like``'s device (and ``dtype``, default ``like``'s), or ``default`` K times.

    Raises a ValueError naming ``name`` when ``vector`` does not have K entries.

    Example:
        >>> import torch
        >>> per_row_vector(None, 2, 0.5, "pref_vector", like=torch.eye(2))
        tensor([0.5000, 0.5000])
    """
    dtype = like.dtype if dtype is None else dtype
    if vector is None:
        return torch.full((k,), default, dtype=dtype, device=like.device)
    if vector.shape[0] != k:
        raise ValueError(f"{name} has {vector.shape[0]} entries, expected K = {k}")
    return vector.to(device=like.device, dtype=dtype)


class Aggregator(nn.Module):
    """A weighting of K label-group gradients, computed from their Gramian ``G = J J^T``.

    The aggregated update is ``J^T w`` with ``w = weights(G)``, i.e. the gradient of
    ``sum_k w_k L_k``: one weighted backward. Subclasses implement :meth:`_weights` on a validated
    Gramian; stateful ones keep their state in registered buffers (``state_dict``, ``.to()``),
    random ones take a ``torch.Generator``. Aggregators that need more than the Gramian subclass
    :class:`JacobianAggregator` instead.

    Example:
        >>> import torch
        >>> import labelgrad as lg
        >>> lg.aggregators.Mean().weights(torch.eye(4))
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """

    #: Whether :meth:`JacobianAggregator.aggregate` must be used (the Gramian is not enough).
    requires_jacobian: bool = False

    def weights(self, gramian: Tensor, /) -> Tensor:
        """The (K,) weights for the Gramian ``gramian`` (K, K), on its device and dtype.

        Args:
            gramian: symmetric positive semi-definite (K, K) matrix ``J J^T``.

        Returns:
            The weights ``w``; the update is ``J^T w``. Constants: computed under
            ``torch.no_grad()`` (the weightings are not differentiable, as in TorchJD).
        """
        with torch.no_grad():
            return self._weights(check_gramian(gramian))

    def _weights(self, gramian: Tensor, /) -> Tensor:
        raise NotImplementedError

    def forward(self, gramian: Tensor, /) -> Tensor:
        """Same as :meth:`weights` (so that module hooks apply)."""
        return self.weights(gramian)

    def extra_repr(self) -> str:
        return ""


class JacobianAggregator(Aggregator):
    """An aggregator that needs the (K, P) Jacobian itself, not only its Gramian.

    The engines call :meth:`aggregate` on the stacked per-label gradients and write the result as
    the shared parameters' gradient.

    Example:
        >>> import torch
        >>> import labelgrad as lg
        >>> lg.aggregators.ConFIG().requires_jacobian
        True
    """

    requires_jacobian = True

    def weights(self, gramian: Tensor, /) -> Tensor:
        """Not available: this aggregator's update is not a function of the Gramian."""
        raise TypeError(
            f"{type(self).__name__} needs the (K, P) Jacobian, not its Gramian: "
            f"call .aggregate(jacobian) (check .requires_jacobian)"
        )

    def aggregate(self, jacobian: Tensor, /) -> Tensor:
        """Map the Jacobian (K, P) of the K label-group losses to the update (P,).

        Args:
            jacobian: the stacked per-label gradients, one row per label group.

        Returns:
            The update direction (P,), on the Jacobian's device and dtype (computed under
            ``torch.no_grad()``).
        """
        with torch.no_grad():
            return self._aggregate(check_jacobian(jacobian))

    def _aggregate(self, jacobian: Tensor, /) -> Tensor:
        raise NotImplementedError

    def forward(self, jacobian: Tensor, /) -> Tensor:
        """Same as :meth:`aggregate`."""
        return self.aggregate(jacobian)
