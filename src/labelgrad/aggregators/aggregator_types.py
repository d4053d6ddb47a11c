"""The two aggregator types (a weighting of the K x K Gramian, a map of the Jacobian) and the
wrapper base of weightings that wrap another one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn

from labelgrad.aggregators.diagnostics import SolverDiagnostics

__all__ = [
    "Aggregator",
    "GramianWeighting",
    "JacobianAggregator",
    "WeightingWrapper",
    "check_gramian",
    "check_jacobian",
    "optional_vector",
    "per_row_vector",
]


#: Dtypes in which a solver's constants (``1e-8`` is 0 in float16) do not survive: upcast.
_HALF = (torch.float16, torch.bfloat16)


def _host_checkable(t: Tensor) -> bool:
    # Value checks read the data on the host: free on CPU, a device sync elsewhere (skipped there).
    return t.device.type == "cpu"


def _reset_counters(module: nn.Module) -> None:
    # Every SolverDiagnostics among the module's own submodules (a wrapped weighting's are reset
    # by that weighting's reset()).
    for sub in module.children():
        if isinstance(sub, SolverDiagnostics):
            sub.reset()


def check_gramian(gramian: object, /, *, psd: bool = True) -> Tensor:
    """Validate a Gramian: a floating 2-D square tensor, finite and of the form ``J J^T`` where
    that is checkable for free.

    Finiteness is checked on CPU tensors only: on an accelerator the check would cost a host
    sync on every step, so a non-finite Gramian there propagates into non-finite weights (which a
    ``GradScaler`` then sees, as it should).

    Args:
        gramian: the candidate Gramian ``G = J J^T`` of shape (K, K).
        psd: check the form ``J J^T`` (False: any square matrix, e.g. MoDo's ``J_1 J_2^T``).

    Returns:
        ``gramian`` unchanged.

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: not 2-D and square, empty, or (on CPU) not finite, or (with ``psd``) not
            symmetric, with a negative diagonal entry or an entry beyond ``sqrt(G_ii G_jj)``
            (not J J^T), each up to ``sqrt(eps)`` times its largest diagonal entry (eps of
            float64 for a float64 G, of bfloat16 for every other dtype).

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
    # One fused test and one read on every call; the step-by-step checks below run only when it
    # fails, to name the fault (so a valid Gramian costs ~15 operators, not ~80).
    if _host_checkable(gramian) and not bool(_valid(gramian, psd)):
        if not bool(gramian.isfinite().all()):
            raise ValueError("the Gramian has non-finite entries (inf or nan)")
        if psd:
            _check_gram_form(gramian)
    return gramian


def _gram_tolerance(gramian: Tensor) -> float:
    # Tolerance: sqrt(eps) times the largest diagonal entry (an engine's rounding); eps of
    # bfloat16 below float64, since a float32 G may carry half-precision rounding (a wrapper
    # passes its upcast half-precision G on to the weighting it wraps).
    coarse = torch.float64 if gramian.dtype == torch.float64 else torch.bfloat16
    return math.sqrt(torch.finfo(coarse).eps)


def _valid(gramian: Tensor, psd: bool) -> Tensor:
    """0-d bool: finite and (with ``psd``) passes every test of :func:`_check_gram_form`.

    The same quantities in the same dtype as that function, fused into one matrix whose largest
    entry must be at most ``tol max_i |G_ii|``: the asymmetry ``|G_ij - G_ji|`` and the excess
    ``|G_ij| - sqrt(G_ii G_jj) (1 + tol)``, whose diagonal is ``-G_ii`` where ``G_ii < 0`` (the
    negative-diagonal test). A NaN anywhere makes the comparison false; an infinite diagonal entry
    makes its excess NaN (``inf - inf``) or the bound's clamp refuse it, an infinite off-diagonal
    entry exceeds the finite bound.
    """
    if not psd:
        return gramian.isfinite().all()
    tol = _gram_tolerance(gramian)
    g = gramian if gramian.dtype == torch.float64 else gramian.double()
    diag = g.diagonal()
    root = diag.clamp(min=0).sqrt()
    excess = g.abs().sub_(torch.outer(root, root).mul_(1 + tol))
    worst = torch.maximum((g - g.mT).abs_(), excess).amax()
    limit = diag.abs().amax().mul_(tol).clamp_(max=torch.finfo(torch.float64).max)
    return worst <= limit


def _check_gram_form(gramian: Tensor) -> None:
    # Necessary conditions for G = J J^T that cost O(K^2), not an eigendecomposition: symmetric,
    # non-negative diagonal, |G_ij| <= sqrt(G_ii G_jj). Every solver assumes them; without them
    # the weights are silently meaningless (NaN from GradVac/SDMGrad, uniform from UPGrad).
    tol = _gram_tolerance(gramian)
    g = gramian.double()
    diag = g.diagonal()
    limit = tol * float(diag.abs().max())
    lowest = int(diag.argmin())
    if float(diag[lowest]) < -limit:
        raise ValueError(
            f"the Gramian has a negative diagonal entry G[{lowest}, {lowest}] = "
            f"{float(diag[lowest]):.3g}: it must be J J^T (symmetric positive semi-definite)"
        )
    if float((g - g.T).abs().max()) > limit:
        raise ValueError(
            "the Gramian is not symmetric: it must be J J^T (symmetric positive semi-definite)"
        )
    root = diag.clamp(min=0).sqrt()
    excess = g.abs() - root[:, None] * root[None, :] * (1 + tol)
    worst = int(excess.argmax())
    if float(excess.reshape(-1)[worst]) > limit:
        i, j = divmod(worst, g.shape[0])
        raise ValueError(
            f"the Gramian is not positive semi-definite (|G[{i}, {j}]| > sqrt(G[{i}, {i}] "
            f"G[{j}, {j}])): it must be J J^T"
        )


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


class GramianWeighting(nn.Module):
    """A weighting of K label-group gradients, computed from their Gramian ``G = J J^T``.

    The aggregated update is ``J^T w`` with ``w = weights(G)``, i.e. the gradient of
    ``sum_k w_k L_k``: one weighted backward. Subclasses implement :meth:`_weights` on a validated
    Gramian; stateful ones keep their state in registered buffers (``state_dict``, ``.to()``),
    random ones take a ``torch.Generator``. Aggregators that need more than the Gramian subclass
    :class:`JacobianAggregator` instead; ``isinstance`` tells the two apart.

    Example:
        >>> import torch
        >>> import labelgrad as lg
        >>> lg.aggregators.Mean().weights(torch.eye(4))
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
        >>> isinstance(lg.aggregators.Mean(), lg.aggregators.GramianWeighting)
        True
    """

    def weights(self, gramian: Tensor, /) -> Tensor:
        """The (K,) weights for the Gramian ``gramian`` (K, K), on its device and dtype.

        A float16 or bfloat16 Gramian is solved in float32 (where every tolerance and
        constant of the solvers exists) and the weights returned in its dtype.

        Args:
            gramian: symmetric positive semi-definite (K, K) matrix ``J J^T``.

        Returns:
            The weights ``w``; the update is ``J^T w``. Constants: computed under
            ``torch.no_grad()`` (the weightings are not differentiable, as in TorchJD). A new
            tensor on every call: editing it in place changes no state of the weighting.
        """
        with torch.no_grad():
            checked = check_gramian(gramian, psd=self.expects_gramian())
            work = checked.float() if checked.dtype in _HALF else checked
            # The one copy of every weighting's answer: stateful ones (MoDo, CRMOGM, ...) keep
            # their iterate in a buffer, which the caller must not be able to edit. (From a
            # half-precision G the cast back to its dtype is that copy.)
            w = self._weights(work)
            return w.to(checked.dtype) if work is not checked else w.clone()

    def _weights(self, gramian: Tensor, /) -> Tensor:
        raise NotImplementedError

    def expects_gramian(self) -> bool:
        """Whether :meth:`weights` refuses a matrix that is not of the form ``J J^T``.

        True for every weighting but those documented to take any square matrix (MoDo and
        SDMGrad's two-batch ``J_1 J_2^T``); the check (symmetry, non-negative diagonal,
        ``|G_ij| <= sqrt(G_ii G_jj)``) runs on CPU tensors only, as the finiteness check.

        Example:
            >>> import labelgrad as lg
            >>> lg.aggregators.UPGrad().expects_gramian(), lg.aggregators.MoDo().expects_gramian()
            (True, False)
        """
        return True

    def reset(self) -> None:
        """Forget the state of past calls: zero the ``diagnostics`` counters (where it has any).

        Stateful weightings extend it (and call it) to restart their statistics as well.
        """
        _reset_counters(self)

    def forward(self, gramian: Tensor, /) -> Tensor:
        """Same as :meth:`weights` (so that module hooks apply)."""
        return self.weights(gramian)

    def extra_repr(self) -> str:
        return ""


class JacobianAggregator(nn.Module):
    """An aggregator that needs the (K, P) Jacobian itself, not only its Gramian.

    The engines call :meth:`aggregate` on the stacked per-label gradients and write the result as
    the shared parameters' gradient. It has no ``weights``: its update is not a weighting of the
    Gramian (so it cannot be amortized, synchronised by a Gramian all-reduce, or smoothed).

    Example:
        >>> import torch
        >>> import labelgrad as lg
        >>> agg = lg.aggregators.ConFIG()
        >>> isinstance(agg, lg.aggregators.JacobianAggregator)
        True
        >>> agg.aggregate(torch.eye(2))
        tensor([1.0000, 1.0000])
    """

    def aggregate(self, jacobian: Tensor, /) -> Tensor:
        """Map the Jacobian (K, P) of the K label-group losses to the update (P,).

        Args:
            jacobian: the stacked per-label gradients, one row per label group.

        Returns:
            The update direction (P,), on the Jacobian's device and dtype (computed under
            ``torch.no_grad()``).
        """
        with torch.no_grad():
            checked = check_jacobian(jacobian)
            if checked.dtype in _HALF:  # as for weightings: solved in float32
                return self._aggregate(checked.float()).to(checked.dtype)
            return self._aggregate(checked)

    def _aggregate(self, jacobian: Tensor, /) -> Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the state of past calls: zero the ``diagnostics`` counters (where it has any).

        Stateful aggregators extend it (and call it) to restart their statistics as well.
        """
        _reset_counters(self)

    def forward(self, jacobian: Tensor, /) -> Tensor:
        """Same as :meth:`aggregate`."""
        return self.aggregate(jacobian)

    def extra_repr(self) -> str:
        return ""


Aggregator: TypeAlias = GramianWeighting | JacobianAggregator
"""Any aggregator: a :class:`GramianWeighting` or a :class:`JacobianAggregator`.

A type alias (the union), for annotations and ``isinstance(agg, Aggregator)``; it cannot be
subclassed: a new aggregator subclasses one of the two.
"""


class WeightingWrapper(GramianWeighting):
    """A Gramian weighting that wraps another one (``Amortized``, ``CRMOGM``, ``synchronized``).

    Holds the wrapped weighting as :attr:`aggregator` (a submodule when it is an ``nn.Module``,
    so ``state_dict`` and ``.to()`` include its state), refuses a :class:`JacobianAggregator`,
    and delegates :meth:`reset` and :attr:`diagnostics` to it. By default its weights are the
    wrapped ones; subclasses override :meth:`_weights` and call the wrapped weighting through its
    public :meth:`~GramianWeighting.weights`.

    Args:
        aggregator: the wrapped weighting (``weights(G) -> (K,)``).

    Example:
        >>> import torch
        >>> import labelgrad as lg
        >>> wrapped = WeightingWrapper(lg.aggregators.UPGrad())
        >>> wrapped.weights(torch.eye(2))
        tensor([0.5000, 0.5000])
        >>> int(wrapped.diagnostics.calls)
        1
    """

    #: What the wrapper does to the weights, for the error on a Jacobian aggregator.
    wraps_as: str = "wrapped"

    def __init__(self, aggregator: GramianWeighting) -> None:
        super().__init__()
        name = type(aggregator).__name__
        if isinstance(aggregator, JacobianAggregator):
            raise TypeError(
                f"{type(self).__name__} wraps a Gramian weighting: {name} needs the Jacobian "
                f"(not a weighting of the Gramian): it cannot be {self.wraps_as}"
            )
        if isinstance(aggregator, type) or not callable(getattr(aggregator, "weights", None)):
            raise TypeError(
                f"{type(self).__name__} wraps a Gramian weighting instance (weights(G) -> (K,), "
                f"e.g. lg.aggregators.UPGrad()), got {name}"
            )
        self.aggregator = aggregator

    def _weights(self, gramian: Tensor, /) -> Tensor:
        w: Tensor = self.aggregator.weights(gramian)
        return w

    def get_extra_state(self) -> dict[str, str]:
        """The wrapped weighting's type: a wrapper's state (cached weights, an iterate) means
        nothing to a wrapper of another weighting, so :meth:`set_extra_state` refuses it."""
        return {"aggregator": type(self.aggregator).__qualname__}

    def set_extra_state(self, state: Any) -> None:
        """Check that the state was saved from a wrapper of the same weighting type.

        Raises:
            ValueError: it was saved from a wrapper of another weighting.
        """
        saved = state.get("aggregator") if isinstance(state, dict) else None
        mine = type(self.aggregator).__qualname__
        if saved is not None and saved != mine:
            wrapper = type(self).__name__
            raise ValueError(
                f"state_dict: saved from {wrapper}({saved}), this is {wrapper}({mine}): its "
                f"state does not apply; load it into {wrapper}({saved}()), or start this one "
                "fresh (do not load it)"
            )

    def _check_saved_type(self, state_dict: Mapping[str, Any], prefix: str) -> None:
        """Refuse a state saved from a wrapper of another weighting before anything loads.

        torch loads the buffers before it calls :meth:`set_extra_state`, and a subclass may
        resize them first: a refused state must leave this wrapper as it was, so subclasses that
        override ``_load_from_state_dict`` call this first.
        """
        extra = prefix + "_extra_state"
        if extra in state_dict:
            self.set_extra_state(state_dict[extra])

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._check_saved_type(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # States saved before the type was recorded (0.2) have no extra state: they still load.
        extra = prefix + "_extra_state"
        if extra not in state_dict and extra in missing_keys:
            missing_keys.remove(extra)

    def expects_gramian(self) -> bool:
        """As the wrapped weighting (a duck-typed one without the method: no assumption)."""
        expects = getattr(self.aggregator, "expects_gramian", None)
        return bool(expects()) if callable(expects) else False

    def reset(self) -> None:
        """Reset the wrapped weighting (where it has ``reset``: its state and counters)."""
        super().reset()
        reset = getattr(self.aggregator, "reset", None)
        if callable(reset):
            reset()

    @property
    def diagnostics(self) -> SolverDiagnostics:
        """The wrapped weighting's ``diagnostics`` (AttributeError where it solves nothing)."""
        found = getattr(self.aggregator, "diagnostics", None)
        if not isinstance(found, SolverDiagnostics):
            raise AttributeError(f"{type(self.aggregator).__name__} has no diagnostics")
        return found
