"""The per-sample Gramian engine for single-label data split into class groups.

With cross-entropy on class indices, loss k is the sum of the losses of the samples whose label
is in group k: the groups are *sample-disjoint*. The gradient of group k is then
``sum_{n in k} grad l_n``, and the group Gramian is ``G = S^T P S`` with ``P`` the N x N Gramian
of the per-sample gradients and ``S`` the sample-to-group membership.

``P`` is cheap for the usual layers without materialising per-sample gradients (the "ghost
norm" identity of Goodfellow 2015 / Li et al. 2022, from the differential-privacy literature):
a Linear layer's per-sample weight gradient is ``B_n^T A_n`` (A: its inputs, B: the gradients
at its outputs, both from ONE ordinary backward), so for one position per sample
``P = (A A^T + 1) ⊙ (B B^T)`` (the 1 for the bias). With T positions per sample (sequences, or
a Conv2d unfolded to its patches, im2col) ``P_nm = sum_{t,s} (A_n A_m^T)_{ts} (B_n B_m^T)_{ts}``,
or, when cheaper, the per-sample gradients are formed explicitly (N x out x in). The weighted
update ``sum_n w_{g(n)} grad l_n`` is ``B^T diag(c) A`` per layer, again without a second
backward.

Use: ``lg.aggregation.track(backbone)`` once (forward hooks record each layer's input and
output), then ``lg.aggregate_backward(losses, shared=backbone, ...)``: ``engine="auto"`` picks
this engine when the losses are cross-entropy class groups (one position per sample) and
``backbone`` is tracked. Parameters of other layer types (LayerNorm, embeddings, a layer called
twice, ...) are handled by the exact engine restricted to them, with a warning naming the layer.
BatchNorm in training mode couples the samples, so the engine does not apply there.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from labelgrad.aggregation import _graph
from labelgrad.aggregation.engines import exact_jacobian, gramian_of, warn_once
from labelgrad.aggregation.losses import loss_structure

__all__ = ["Tracker", "applicability", "run_sample_gramian", "track"]

_TRACKERS: weakref.WeakKeyDictionary[nn.Module, Tracker] = weakref.WeakKeyDictionary()
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
            if any(True for _ in sub.parameters(recurse=False)):
                self._handles.append(sub.register_forward_hook(self._record))

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled() or not inputs or not isinstance(inputs[0], Tensor):
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
        _TRACKERS.pop(self.module, None)


def track(module: nn.Module) -> Tracker:
    """Record layer inputs and outputs of ``module`` for the sample-Gramian engine.

    Call once before training; ``lg.aggregate_backward(losses, shared=module, ...)`` then uses
    the records of the current forward pass.

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
    old = _TRACKERS.get(module)
    if old is not None:
        return old
    tracker = Tracker(module)
    _TRACKERS[module] = tracker
    return tracker


def applicability(losses: Tensor, shared: object) -> tuple[bool, str]:
    """(True, reason) when the sample-Gramian engine computes the exact G for this call."""
    structure = loss_structure(losses)
    if structure is None or structure.kind != "sample":
        return False, "the losses are not cross-entropy class groups from lg.per_label_losses"
    assert structure.sample_group is not None
    if structure.sample_group.numel() != structure.logits.shape[0]:
        return False, "several label positions per sample (the groups are not sample-disjoint)"
    if not isinstance(shared, nn.Module) or shared not in _TRACKERS:
        return False, (
            "shared is not a module tracked with lg.aggregation.track(module) before the forward"
        )
    for sub in shared.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
            return False, f"{type(sub).__name__} in training mode couples the samples of the batch"
    return True, (
        "sample-Gramian engine: class groups are sample-disjoint, G = S^T P S with P from one "
        "ordinary backward"
    )


def _from_compiled_graph(out: Tensor) -> bool:
    """Whether ``out`` was produced by a torch.compile'd graph (AOTAutograd's backward node)."""
    return "CompiledFunction" in type(out.grad_fn).__name__


def _supported(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _positions(module: nn.Module, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(A, B) as (N, T, in) and (N, T, out) for the per-sample gradient B_n^T A_n."""
    n = a.shape[0]
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(
            a,
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,  # type: ignore[arg-type]
            stride=module.stride,
        )
        return cols.transpose(1, 2), b.reshape(n, b.shape[1], -1).transpose(1, 2)
    return a.reshape(n, -1, a.shape[-1]), b.reshape(n, -1, b.shape[-1])


def _layer_gramian(a: Tensor, b: Tensor, has_bias: bool) -> Tensor:
    """N x N Gramian of the per-sample gradients of one layer (weight and bias)."""
    n, t, din = a.shape
    dout = b.shape[2]
    if t == 1:
        aa = a[:, 0] @ a[:, 0].T
        if has_bias:
            aa = aa + 1
        return aa * (b[:, 0] @ b[:, 0].T)
    bias = b.sum(1) @ b.sum(1).T if has_bias else 0
    if n * t * t <= din * dout:  # ghost-norm over position pairs is cheaper
        aa = torch.einsum("nti,msi->nmts", a, a)
        bb = torch.einsum("nto,mso->nmts", b, b)
        return (aa * bb).sum((2, 3)) + bias
    per_sample = torch.einsum("nto,nti->noi", b, a).reshape(n, -1)
    return per_sample @ per_sample.T + bias


def run_sample_gramian(
    losses: Tensor,
    shared: object,
    params: Sequence[Tensor],
    weigh: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Run the engine: writes the shared and other gradients, returns (G, weights)."""
    ok, why = applicability(losses, shared)
    if not ok:
        raise ValueError(f"engine='sample_gramian' cannot run here: {why}")
    assert isinstance(shared, nn.Module)
    structure = loss_structure(losses)
    assert structure is not None
    assert structure.sample_group is not None
    n = structure.logits.shape[0]
    tracker = _TRACKERS[shared]
    on_graph = {id(node) for node in _graph.nodes_reached(losses.grad_fn)}
    wanted = {id(p) for p in params}

    layers: list[tuple[nn.Module, Tensor, Tensor]] = []
    covered: set[int] = set()
    for module, calls in tracker.calls.items():
        live = [
            (a, out) for a, out in calls if out.grad_fn is not None and id(out.grad_fn) in on_graph
        ]
        own = [p for p in module.parameters(recurse=False) if id(p) in wanted]
        if not own or not live:
            continue
        if any(_from_compiled_graph(out) for _, out in live):
            # Inside torch.compile the hook sees a side output of the compiled graph, not the
            # tensor the next layer consumes: its gradient would be 0. Use the exact engine.
            warn_once(
                f"sg-compiled:{type(module).__name__}",
                f"labelgrad: {type(module).__name__} runs inside a torch.compile'd region; the "
                "sample-Gramian engine cannot see its real output and uses the exact engine for "
                "its parameters",
            )
            continue
        if len(live) == 1 and _supported(module) and live[0][0].shape[0] == n:
            layers.append((module, live[0][0], live[0][1]))
            covered.update(id(p) for p in own)
        elif len(live) > 1:
            warn_once(
                f"sg-reuse:{type(module).__name__}",
                f"labelgrad: {type(module).__name__} is called {len(live)} times in the forward "
                "pass; the sample-Gramian engine uses the exact engine for its parameters",
            )
        else:
            warn_once(
                f"sg-type:{type(module).__name__}",
                f"labelgrad: the sample-Gramian engine has no per-sample rule for "
                f"{type(module).__name__}; it uses the exact engine for that layer's parameters",
            )
    fallback = [p for p in params if id(p) not in covered]
    fb_jac: list[Tensor] = []
    if fallback:
        jac = exact_jacobian(losses, fallback, chunk_size=None, batched=None)
        missing = [i for i, j in enumerate(jac) if j is None]
        if missing:
            raise ValueError(
                f"the losses do not reach {len(missing)} of the shared parameters "
                f"(shapes {[tuple(fallback[i].shape) for i in missing[:5]]})"
            )
        fb_jac = [j for j in jac if j is not None]

    # The one ordinary backward, to the layer outputs (B) and the non-shared leaves only: the
    # covered layers' own weight gradients are not formed (they come from B^T diag(c) A below).
    others = [leaf for leaf in _graph.leaves_reached(losses) if id(leaf) not in wanted]
    outs = [out for _, _, out in layers]
    try:
        grads: tuple[Tensor | None, ...] = torch.autograd.grad(
            losses.sum(), [*outs, *others], allow_unused=True
        )
    finally:
        for layer in tracker.calls.values():
            layer.clear()
    for leaf, grad in zip(others, grads[len(outs) :]):
        if grad is not None:
            with torch.no_grad():
                if leaf.grad is None:
                    leaf.grad = grad
                else:
                    leaf.grad.add_(grad)

    k = structure.num_groups
    valid = structure.sample_known
    assert valid is not None
    group = structure.sample_group
    dtype = torch.promote_types(losses.dtype, torch.float32)
    p_total = torch.zeros(n, n, dtype=dtype, device=losses.device)
    prepared: list[tuple[nn.Module, Tensor, Tensor]] = []
    for module, a_in, _out in layers:
        b_out = grads[len(prepared)]
        if b_out is None:  # the losses reach this layer only through paths with zero gradient
            b_out = torch.zeros_like(_out)
        a, b = _positions(module, a_in, b_out)
        prepared.append((module, a, b))
        p_total += _layer_gramian(a.to(dtype), b.to(dtype), module.bias is not None)
    # G = S^T P S as two scatters over the group ids (no one-hot matrix, no host sync).
    vmask = valid.to(dtype)
    p_total = p_total * vmask.unsqueeze(1) * vmask.unsqueeze(0)
    rows = torch.zeros(k, n, dtype=dtype, device=p_total.device).index_add_(0, group, p_total)
    g = torch.zeros(k, k, dtype=dtype, device=p_total.device).index_add_(1, group, rows)
    if fb_jac:
        g = g + gramian_of(fb_jac)
    w = weigh(g)
    c = w.to(dtype)[group] * valid.to(dtype)

    with torch.no_grad():
        updates: dict[int, Tensor] = {}
        for module, a, b in prepared:
            bc = b * c.to(b.dtype)[:, None, None]
            weight = module.weight
            assert isinstance(weight, Tensor)
            flat_b, flat_a = bc.reshape(-1, bc.shape[-1]), a.reshape(-1, a.shape[-1])
            updates[id(weight)] = (flat_b.T @ flat_a).reshape(weight.shape)
            if isinstance(module.bias, Tensor):
                updates[id(module.bias)] = bc.sum((0, 1))
        for p, j in zip(fallback, fb_jac):
            updates[id(p)] = torch.tensordot(w.to(j.dtype), j, dims=1)
        for p in params:
            update = updates[id(p)].to(p.dtype)
            if p.grad is None:
                p.grad = update
            else:
                p.grad.add_(update)
    return g, w
