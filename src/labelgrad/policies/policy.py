"""The gate at the logits and the :class:`Policy` base class.

A policy is an ``nn.Module`` whose call returns the logits unchanged and registers a custom
``torch.autograd.Function`` (:class:`_Gate`) on them. In the backward pass the gate hands
dL/dlogits, laid out as (N, S, C), to :meth:`Policy.transform` together with the batch's targets
in the same layout, and passes the result on. This is deliberately a surrogate gradient: the
parameters receive the gradient of the reweighted loss, exactly, for every loss and every model,
at O(N·C) cost and with no host-device synchronisation. Policies that set ``reads_logits = True``
also see the forward logits (:attr:`GradContext.logits`), so that they can return the gradient of
another loss (a surrogate); the gate saves the logits tensor itself, only for those policies.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from labelgrad._distributed import gradient_world_size
from labelgrad._layout import class_back as _class_back
from labelgrad._layout import class_last as _class_last
from labelgrad.policies._scalars import scalar
from labelgrad.targets import Targets, TargetsLike, normalize_class_dim

__all__ = ["GradContext", "Policy", "no_state_update", "state_updates_enabled"]

_STATE_UPDATES = [True]


@contextlib.contextmanager
def no_state_update() -> Iterator[None]:
    """Run backward passes that must not update the statistics of stateful policies.

    Auxiliary backward passes (the per-label vector-Jacobian products of the aggregation engines,
    gradient checks, probing) would otherwise count one batch several times. A module-level flag,
    not a thread-local one: autograd runs CUDA backward passes on its own threads.

    Example:
        >>> import torch, labelgrad as lg
        >>> policy = lg.eqlv2(num_classes=3)
        >>> z = torch.zeros(2, 3, requires_grad=True)
        >>> with lg.no_state_update():
        ...     policy(z, torch.tensor([0, 1])).sum().backward()
        >>> float(policy.pos_grad.sum())
        0.0
    """
    previous = _STATE_UPDATES[0]
    _STATE_UPDATES[0] = False
    try:
        yield
    finally:
        _STATE_UPDATES[0] = previous


def state_updates_enabled() -> bool:
    """Whether stateful policies may update their statistics in the current backward pass."""
    return _STATE_UPDATES[0]


@dataclass(frozen=True)
class GradContext:
    """What a policy sees besides the gradient, in the (N, S, C) layout of the gradient.

    Attributes:
        targets: the batch's targets, class axis last (``positive``, ``known``, ``values``:
            (N, S, C); ``indices``: (N, S) for class-index labels), or None when the policy was
            called without targets.
        grad_scale: the factor between the gradient at the logits and the gradient that is
            applied, as a 0-d float32 tensor on the gradient's device, or None for 1: the loss
            scale of an attached ``torch.amp.GradScaler``, times the world size under
            torch.distributed (DDP and FSDP average gradients over ranks). Norm thresholds and
            gradient statistics divide by it so that they depend on neither.
        update_state: whether stateful policies may update their statistics in this pass.
        logits: the forward logits in the gradient's (N, S, C) layout, for policies that set
            ``reads_logits = True`` (anywhere in a chain); None otherwise.
    """

    targets: Targets | None
    grad_scale: Tensor | None
    update_state: bool
    logits: Tensor | None = None

    def require_targets(self, policy: Policy) -> Targets:
        """Return the targets, or raise a clear error naming ``policy``."""
        if self.targets is None:
            raise ValueError(
                f"{type(policy).__name__} reads the labels: call it as policy(logits, targets)"
            )
        return self.targets

    def require_logits(self, policy: Policy) -> Tensor:
        """Return the logits, or raise a clear error naming ``policy``."""
        if self.logits is None:
            raise ValueError(
                f"{type(policy).__name__} reads the logits: set reads_logits = True on its class"
            )
        return self.logits

    def unscale(self, x: Tensor) -> Tensor:
        """Divide ``x`` by the loss scale, if a GradScaler is attached."""
        if self.grad_scale is None:
            return x
        return x / self.grad_scale.to(x.dtype)


class Policy(nn.Module):
    """Base class of every policy at the logits.

    Subclasses implement :meth:`transform`, which maps the gradient at the logits, laid out as
    (N, S, C) (samples, positions, classes), to a new gradient of the same shape. Calling a
    policy returns the logits unchanged; the transform runs in the backward pass.

    Set ``requires_targets = False`` on policies that do not read labels, so that
    ``policy(logits)`` works without targets. Set ``reads_logits = True`` on policies that read
    the forward logits (``ctx.logits``): the gate then keeps the logits tensor for the backward
    pass (no copy; the memory of one logits tensor until backward), and only then.

    Args: none; subclasses take their own.

    Example:
        A policy that halves the gradient of every negative label, in a few lines:

        >>> import torch, labelgrad as lg
        >>> class HalveNegatives(lg.Policy):
        ...     def transform(self, grad, ctx):
        ...         t = ctx.require_targets(self)
        ...         return torch.where(t.positive, grad, 0.5 * grad)
        >>> z = torch.zeros(1, 3, requires_grad=True)
        >>> HalveNegatives()(z, torch.tensor([1])).sum().backward()
        >>> z.grad.tolist()
        [[0.5, 1.0, 0.5]]
    """

    requires_targets: ClassVar[bool] = True
    reads_logits: ClassVar[bool] = False
    supports_double_backward: ClassVar[bool] = False
    """Whether a second-order backward (``create_graph=True``, then a backward of the gradient)
    may run through this policy. The gate sits in the first-order graph too, so a second-order
    pass applies :meth:`transform` again (the Hessian term of a reweighting w becomes w² instead
    of w) and a stateful policy counts the batch twice. Off by default: the first backward still
    works under ``create_graph=True``; differentiating its result raises a RuntimeError. Set it
    only for a transform that is the identity on values."""

    def __init__(self) -> None:
        super().__init__()
        self._grad_scaler: Any = None

    def transform(self, grad: Tensor, ctx: GradContext) -> Tensor:
        """Map dL/dlogits (N, S, C) to the gradient passed on to the model.

        Args:
            grad: the upstream gradient at the logits, class axis last, shape (N, S, C).
            ctx: the targets in the same layout, the loss scale and the state-update flag.

        Returns:
            A tensor of the same shape and dtype.
        """
        raise NotImplementedError

    def expected_num_classes(self) -> int | None:
        """The number of classes this policy was built for, if it fixes one."""
        return None

    def check_call(self, num_classes: int, device: torch.device) -> None:
        """Check, when called, that this policy fits logits with ``num_classes`` on ``device``.

        Called once per forward, from metadata only (no host-device synchronisation). The
        default checks the policies it contains; override it (and call ``super()``) to refuse a
        call with a one-line ValueError before the backward pass would fail.
        """
        if self._modules:  # a leaf policy has nothing to walk (checked every call)
            for child in _child_policies(self):
                child.check_call(num_classes, device)

    def keeps_logits(self) -> bool:
        """Whether this policy, or one inside it, reads the forward logits (``reads_logits``)."""
        return any(isinstance(m, Policy) and m.reads_logits for m in self.modules())

    def end_backward(self) -> None:
        """Called by the gate after each backward pass through this policy.

        The default forwards the call to the policies this one contains;
        :class:`~labelgrad.StatefulPolicy` uses it to set a micro-batch's statistics aside inside
        an accumulation window (:func:`labelgrad.accumulation_window`).
        """
        if self._modules:  # a leaf policy has nothing to walk (called every backward)
            for child in _child_policies(self):
                child.end_backward()

    def reset(self) -> None:
        """Restore the statistics of this policy and of those it contains to their initial values.

        A stateless policy has none; :class:`~labelgrad.StatefulPolicy` restores its buffers and
        :class:`~labelgrad.Schedule` its step counter, so that ``chain(...).reset()`` and
        ``ldam_drw(...).reset()`` start over like freshly built policies.

        Example:
            >>> import torch, labelgrad as lg
            >>> policy = lg.chain(lg.mask_unknown(), lg.eqlv2(num_classes=2))
            >>> z = torch.zeros(2, 2, requires_grad=True)
            >>> policy(z, torch.tensor([[1, 0], [0, 1]])).sum().backward()
            >>> policy.reset()
            >>> policy.policies[1].pos_grad.tolist()
            [0.0, 0.0]
        """
        for child in _child_policies(self):
            child.reset()

    def attach_grad_scaler(self, scaler: Any) -> Policy:
        """Make norm thresholds and statistics independent of a GradScaler's loss scale.

        Under ``torch.amp.GradScaler`` the gradient at the logits is multiplied by the loss
        scale. Attach the scaler so that clipping thresholds and gradient statistics are applied
        to the unscaled gradient; the scale is read on the device, with no host synchronisation.

        Args:
            scaler: a ``torch.amp.GradScaler`` (or ``torch.cuda.amp.GradScaler``), or None to
                detach.

        Returns:
            ``self``, for chaining.
        """
        if scaler is not None and not hasattr(scaler, "_get_scale_async"):
            raise TypeError(
                f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}"
            )
        self._grad_scaler = scaler
        return self

    def forward(
        self,
        logits: Tensor,
        targets: TargetsLike | None = None,
        *,
        class_dim: int = 1,
        ignore_index: int = -100,
    ) -> Tensor:
        """Return ``logits`` unchanged; transform dL/dlogits in the backward pass.

        Args:
            logits: (N, C, *) logits (class axis at ``class_dim``).
            targets: the labels in any encoding :meth:`Targets.coerce` accepts, or a
                ``Targets``. Optional for policies that do not read labels.
            class_dim: the class axis of ``logits``; -1 for (N, T, C) token logits.
            ignore_index: the "no label" index of class-index targets.

        Returns:
            A tensor equal to ``logits``, carrying the gate in its autograd graph.
        """
        if not isinstance(logits, Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
        class_dim = normalize_class_dim(class_dim, logits.dim())
        expected = self.expected_num_classes()
        if expected is not None and logits.shape[class_dim] != expected:
            raise ValueError(
                f"{type(self).__name__} was built for num_classes={expected}, but the logits' "
                f"class axis (class_dim={class_dim}) has length {logits.shape[class_dim]}"
            )
        self.check_call(logits.shape[class_dim], logits.device)
        t: Targets | None = None
        if targets is not None:
            t = Targets.coerce(
                targets,
                num_classes=logits.shape[class_dim],
                class_dim=class_dim,
                ignore_index=ignore_index,
                like=logits,
            )
            if t.device != logits.device:
                # Labels often stay where the loader put them (the CPU): checked there for free,
                # then copied over (a host-to-device copy, not a read-back).
                t = t.to(logits.device)
        elif self.requires_targets:
            raise ValueError(
                f"{type(self).__name__} reads the labels: call it as policy(logits, targets)"
            )
        if not torch.is_grad_enabled() or not logits.requires_grad:
            return logits
        return gate(logits, self, t, class_dim)

    def _context(
        self, grad: Tensor, targets: Targets | None, logits: Tensor | None = None
    ) -> GradContext:
        scale: Tensor | None = None
        scaler = self._grad_scaler
        if scaler is not None and scaler.is_enabled():
            s = scaler._get_scale_async()
            if s is not None:
                scale = s.to(device=grad.device, dtype=torch.float32)
        # DDP/FSDP average gradients over ranks: a rank's gradient at the logits is world_size
        # times its share of the applied gradient. Thresholds and statistics refer to the applied
        # gradient, so that W ranks behave as one process on the concatenated batch.
        world = gradient_world_size()
        if world > 1:
            w = torch.full((), float(world), dtype=torch.float32, device=grad.device)
            scale = w if scale is None else scale * w
        return GradContext(
            targets=targets,
            grad_scale=scale,
            update_state=state_updates_enabled(),
            logits=logits,
        )


class _Gate(torch.autograd.Function):
    """Identity in the forward pass; ``policy.transform`` of the gradient in the backward pass."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        logits: Tensor,
        positive: Tensor | None,
        known: Tensor | None,
        values: Tensor | None,
        indices: Tensor | None,
        meta: tuple[Policy, Targets | None, int, bool],
    ) -> Tensor:
        # A copy, not a view: autograd forbids in-place changes of a view made inside a custom
        # Function (``policy(z, y).div_(T)`` would fail), and an alias would let the caller's
        # in-place change reach the logits a surrogate policy reads in backward. x * 1 is exact
        # (NaN, inf and -0 included) and one operator, where clone() dispatches three.
        return logits * scalar(1.0, logits)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        logits, positive, known, values, indices, meta = inputs
        ctx.meta = meta
        ctx.has_targets = known is not None
        # The input itself, not a copy: saved only when a policy reads it (meta[3]).
        saved = [logits] if meta[3] else []
        if known is not None:
            saved += [positive, known, values, indices]
        ctx.save_for_backward(*saved)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        policy, proto, class_dim, keep_logits = ctx.meta
        saved = ctx.saved_tensors
        logits = None
        if keep_logits:
            logits, saved = saved[0], saved[1:]
        targets = None
        if ctx.has_targets:
            assert proto is not None
            positive, known, values, indices = saved
            # positive None: ``values`` carries the float labels both follow from (see gate).
            targets = Targets(
                positive=positive,
                known=known,
                num_classes=proto.num_classes,
                class_dim=2,
                encoding=proto.encoding,
                indices=indices,
                values=values if positive is not None else None,
                float_labels=values if positive is None else None,
            )
        out = _backward(policy, grad, targets, logits, class_dim)
        return out, None, None, None, None, None


class _GateEager(torch.autograd.Function):
    """:class:`_Gate` without ``setup_context``, for eager calls (no torch.func, no compile).

    ``Function.apply`` binds the arguments with ``inspect.signature`` for every call of a
    Function that defines ``setup_context`` (tens of microseconds per step on the CPU); vmap and
    the other torch.func transforms need that form, plain autograd does not. Nor does it need the
    labels as saved tensors: the (N, S, C) ``Targets`` travels as it is, with the 0/1 masks its
    checks already made (``Targets.mask_as``), and the masks still to make are made once.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, meta: tuple[Policy, Targets | None, int, bool]) -> Tensor:
        ctx.meta = meta
        if meta[3]:
            ctx.save_for_backward(logits)
        # A copy, not a view: see _Gate.forward.
        return logits * scalar(1.0, logits)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        policy, targets, class_dim, keep_logits = ctx.meta
        logits = ctx.saved_tensors[0] if keep_logits else None
        return _backward(policy, grad, targets, logits, class_dim), None


def _backward(
    policy: Policy, grad: Tensor, targets: Targets | None, logits: Tensor | None, class_dim: int
) -> Tensor:
    """The gate's backward: ``policy.transform`` of ``grad`` in the (N, S, C) layout."""
    _refuse_state_update_in_func_transform(policy)
    shape = grad.shape
    n, c = shape[0], shape[class_dim]
    s = math.prod(shape) // max(n * c, 1)  # -1 is ambiguous at n=0
    flat = _class_last(grad, class_dim, n, s, c)
    if logits is not None:
        logits = _class_last(logits, class_dim, n, s, c)
    if torch.is_grad_enabled() and grad.requires_grad and not policy.supports_double_backward:
        # create_graph=True: the first derivative is fine; a second-order pass would run
        # through this gate again (see Policy.supports_double_backward): refuse that one.
        with torch.no_grad():
            out = policy.transform(flat, policy._context(flat, targets, logits))
        out = _RefuseDoubleBackward.apply(out, flat, type(policy).__name__)
    else:
        out = policy.transform(flat, policy._context(flat, targets, logits))
    policy.end_backward()
    return _class_back(out, class_dim, shape)


# Private torch API, looked up once: when it is missing, every call takes the torch.func form.
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def _eager() -> bool:
    """Whether the gate may take its eager form: torch.compile and the torch.func transforms
    take the setup_context form (:class:`_Gate`)."""
    return not (_functorch_active is None or _functorch_active() or torch.compiler.is_compiling())


class _RefuseDoubleBackward(torch.autograd.Function):
    """Passes a transformed gradient on; raises if it is ever differentiated."""

    generate_vmap_rule = True

    @staticmethod
    def forward(out: Tensor, upstream: Tensor, name: str) -> Tensor:
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.name = inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        raise RuntimeError(
            f"{ctx.name} does not support double backward: a second-order pass would apply the "
            "policy's transform again (and count a stateful policy's batch twice); differentiate "
            "the reweighted loss instead, or see Policy.supports_double_backward"
        )


def _refuse_state_update_in_func_transform(policy: Policy) -> None:
    """A clear error instead of torch.func's refusal of the in-place statistics update."""
    if not state_updates_enabled() or torch.compiler.is_compiling():
        return
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    if level is None or level() is None:
        return
    for m in policy.modules():
        if getattr(m, "_updates_state", False):
            raise RuntimeError(
                f"{type(m).__name__} updates its statistics in the backward pass, which a "
                "torch.func transform (grad, vjp, vmap) cannot do: run the transform inside "
                "lg.no_state_update() (statistics unchanged), or call the policy outside it"
            )


def _child_policies(module: nn.Module) -> Iterator[Policy]:
    """The policies directly inside ``module`` (through containers such as ``nn.ModuleList``)."""
    for child in module.children():
        if isinstance(child, Policy):
            yield child
        else:
            yield from _child_policies(child)


def gate(logits: Tensor, policy: Policy, targets: Targets | None, class_dim: int) -> Tensor:
    """Place ``policy`` on ``logits``: identity forward, ``policy.transform`` backward."""
    out: Tensor
    keep = policy.keeps_logits()
    flat = None if targets is None else targets.class_last()
    meta = (policy, flat, class_dim, keep)
    if _eager():
        out = _GateEager.apply(logits, meta)
        return out
    fn = _Gate
    if flat is None:
        out = fn.apply(logits, None, None, None, None, meta)
        return out
    if flat.float_labels is not None:
        # Float labels: positive and values follow from them in backward, where read; the
        # labels travel in the values slot.
        out = fn.apply(logits, None, flat.known, flat.float_labels, flat.indices, meta)
        return out
    # Hard labels' values follow from positive (rebuilt in backward if read): saved for soft only.
    values = flat.values if flat.encoding == "soft" else None
    out = fn.apply(logits, flat.positive, flat.known, values, flat.indices, meta)
    return out
