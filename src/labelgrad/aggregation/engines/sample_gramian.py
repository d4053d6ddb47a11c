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
output), then ``lg.aggregate_backward(losses, shared=backbone, ...)`` (or ``tracker=`` the
tracker explicitly): ``engine="auto"`` picks this engine when the losses are cross-entropy class
groups (one position per sample) and ``backbone`` is tracked. Parameters of other layer types
(LayerNorm, embeddings, a layer called twice, ...) are handled by the exact engine restricted
to them, with a warning naming the layer. BatchNorm in training mode couples the samples, so
the engine does not apply there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelgrad.aggregation import _graph, _write
from labelgrad.aggregation._warn import warn_once
from labelgrad.aggregation.engines._shared import (
    checked_jacobian,
    jacobian_refusal,
    rows_per_chunk,
)
from labelgrad.aggregation.engines.protocol import Call, Prepared, Verdict, own
from labelgrad.aggregation.per_label_jacobian import gramian_of, row_bytes
from labelgrad.aggregation.tracker import Tracker

__all__ = ["SampleGramian", "SampleGramianPrepared"]

_NOT = "sample-Gramian engine not applicable: "


def _tracker(call: Call) -> Tracker | None:
    given = call.options.tracker
    return given if given is not None else Tracker.of(call.shared)


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
        return cols.transpose(1, 2), b.flatten(2).transpose(1, 2)
    # Explicit position counts, not -1: with an empty batch (N = 0) -1 is ambiguous.
    return (
        a.reshape(n, math.prod(a.shape[1:-1]), a.shape[-1]),
        b.reshape(n, math.prod(b.shape[1:-1]), b.shape[-1]),
    )


def _add_layer_gramian(total: Tensor, a: Tensor, b: Tensor, has_bias: bool) -> None:
    """``total += `` the N x N Gramian of one layer's per-sample gradients (weight and bias)."""
    if a.shape[1] == 1:  # one position per sample: (A A^T + 1) ⊙ (B B^T), fused in place
        a2, b2 = a[:, 0], b[:, 0]
        aa = torch.mm(a2, a2.t())
        if has_bias:
            aa.add_(_one(aa))
        total.addcmul_(aa, torch.mm(b2, b2.t()))
    else:
        total.add_(_layer_gramian(a, b, has_bias))


_ONES: dict[torch.dtype, Tensor] = {}


def _one(like: Tensor) -> Tensor | float:
    """1 for an in-place add to ``like``: on the CPU a cached 0-d tensor of its dtype (a Python
    number costs a conversion of four operators there), elsewhere the number."""
    if like.device.type != "cpu":
        return 1.0
    one = _ONES.get(like.dtype)
    if one is None:
        with torch.inference_mode(False):
            one = _ONES[like.dtype] = torch.ones((), dtype=like.dtype)
    return one


def _layer_gramian(a: Tensor, b: Tensor, has_bias: bool) -> Tensor:
    """N x N Gramian of the per-sample gradients of one layer, T positions per sample."""
    n, t, din = a.shape
    dout = b.shape[2]
    bias = b.sum(1) @ b.sum(1).T if has_bias else 0
    if n * t * t <= din * dout:  # ghost-norm over position pairs is cheaper
        aa = torch.einsum("nti,msi->nmts", a, a)
        bb = torch.einsum("nto,mso->nmts", b, b)
        return (aa * bb).sum((2, 3)) + bias
    per_sample = torch.einsum("nto,nti->noi", b, a).reshape(n, -1)
    return per_sample @ per_sample.T + bias


@dataclass(eq=False, kw_only=True)
class SampleGramianPrepared(Prepared):
    """The layers the per-sample rule covers, their (A, B) positions, and the rest's Jacobian."""

    layers: list[tuple[nn.Module, Tensor, Tensor]]
    fallback: list[Tensor]
    fallback_jacobian: list[Tensor]
    vmask: Tensor  # (N,) 1.0 where the sample's label counts, in the Gramian's dtype


def _live_layers(
    call: Call, tracker: Tracker, n: int, on_graph: set[int]
) -> tuple[list[tuple[nn.Module, Tensor, Tensor]], set[int]]:
    """Tracked layers of this forward that own shared parameters and have a per-sample rule."""
    wanted = {id(p) for p in call.params}
    layers: list[tuple[nn.Module, Tensor, Tensor]] = []
    covered: set[int] = set()
    for module, calls in tracker.calls.items():
        live = [(a, o) for a, o in calls if o.grad_fn is not None and id(o.grad_fn) in on_graph]
        own = [p for p in module.parameters(recurse=False) if id(p) in wanted]
        if not own or not live:
            continue
        name = type(module).__name__
        if any(_from_compiled_graph(out) for _, out in live):
            # Inside torch.compile the hook sees a side output of the compiled graph, not the
            # tensor the next layer consumes: its gradient would be 0. Use the exact engine.
            warn_once(
                f"sg-compiled:{name}",
                f"labelgrad: {name} runs inside a torch.compile'd region; the sample-Gramian "
                "engine cannot see its real output and uses the exact engine for its parameters",
            )
        elif len(live) == 1 and _supported(module) and live[0][0].shape[0] == n:
            layers.append((module, live[0][0], live[0][1]))
            covered.update(id(p) for p in own)
        elif len(live) > 1:
            warn_once(
                f"sg-reuse:{name}",
                f"labelgrad: {name} is called {len(live)} times in the forward pass; the "
                "sample-Gramian engine uses the exact engine for its parameters",
            )
        else:
            warn_once(
                f"sg-type:{name}",
                f"labelgrad: the sample-Gramian engine has no per-sample rule for {name}; it "
                "uses the exact engine for that layer's parameters",
            )
    return layers, covered


def _fallback_jacobian(call: Call, fallback: list[Tensor]) -> list[Tensor]:
    """J over the parameters without a per-sample rule, chunked within the budget as exact's."""
    if not fallback:
        return []
    k, per_row = call.losses.numel(), row_bytes(fallback)
    rows = rows_per_chunk(k, per_row, call, held=k * per_row, inputs=fallback)
    return checked_jacobian(call, fallback, "shared", rows, among=call.params)


def _backward_to_outputs(
    call: Call, tracker: Tracker, outs: list[Tensor], others: list[Tensor]
) -> list[Tensor | None]:
    """The one ordinary backward, to the layer outputs (B) and the non-shared leaves only.

    The covered layers' own weight gradients are not formed (they come from B^T diag(c) A).
    """
    try:
        grads = torch.autograd.grad(call.losses.sum(), [*outs, *others], allow_unused=True)
    finally:
        for layer in tracker.calls.values():
            layer.clear()
    with torch.no_grad():
        for leaf, grad in zip(others, grads[len(outs) :]):
            if grad is not None:
                _write.add_grad(leaf, grad)
    return list(grads[: len(outs)])


def _group_gramian(p_total: Tensor, group: Tensor, vmask: Tensor, k: int) -> Tensor:
    """G = S^T P S as two scatters over the group ids (no one-hot matrix, no host sync)."""
    p_total.mul_(vmask.unsqueeze(1)).mul_(vmask.unsqueeze(0))
    n, dtype, device = p_total.shape[0], p_total.dtype, p_total.device
    rows = torch.zeros(k, n, dtype=dtype, device=device).index_add_(0, group, p_total)
    return torch.zeros(k, k, dtype=dtype, device=device).index_add_(1, group, rows)


class SampleGramian:
    """Single-label class groups: G = S^T P S from per-sample gradient Gramians of the layers."""

    name: ClassVar[str] = "sample_gramian"
    reuses_weights: ClassVar[bool] = False

    def applies(self, call: Call) -> Verdict:
        structure = call.options.structure
        refusal = jacobian_refusal(self.name, call, asked=False)
        if refusal is not None:
            return refusal
        if structure is None or structure.kind != "sample":
            why = "the losses are not cross-entropy class groups from lg.per_label_losses"
            if structure is None and call.options.structure_note:
                why += f" ({call.options.structure_note})"
            return Verdict(self.name, False, "not_class_groups", _NOT + why)
        assert structure.sample_group is not None
        if structure.sample_group.numel() != structure.logits.shape[0]:
            why = "several label positions per sample (the groups are not sample-disjoint)"
            return Verdict(self.name, False, "positions", _NOT + why)
        tracker = _tracker(call)
        if tracker is None:
            why = (
                "shared is not a module tracked with lg.aggregation.track(module) before the "
                "forward (or pass tracker=)"
            )
            return Verdict(self.name, False, "not_tracked", _NOT + why)
        for sub in tracker.module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
                why = f"{type(sub).__name__} in training mode couples the samples of the batch"
                return Verdict(self.name, False, "batchnorm", _NOT + why)
        detail = (
            "sample-Gramian engine: class groups are sample-disjoint, G = S^T P S with P from "
            "one ordinary backward"
        )
        return Verdict(self.name, True, "sample_gramian", detail)

    def gramian(self, call: Call) -> Prepared:
        structure, tracker = call.options.structure, _tracker(call)
        assert structure is not None
        assert tracker is not None
        assert structure.sample_group is not None
        assert structure.sample_known is not None
        n = structure.logits.shape[0]
        nodes = _graph.nodes_reached(call.losses.grad_fn)  # one walk for both uses below
        layers, covered = _live_layers(call, tracker, n, {id(node) for node in nodes})
        fallback = [p for p in call.params if id(p) not in covered]
        fb_jac = _fallback_jacobian(call, fallback)
        wanted = {id(p) for p in call.params}
        others = [v for v in _graph.variables(nodes) if id(v) not in wanted]
        b_outs = _backward_to_outputs(call, tracker, [out for _, _, out in layers], others)
        dtype = torch.promote_types(call.losses.dtype, torch.float32)
        p_total = torch.zeros(n, n, dtype=dtype, device=call.losses.device)
        prepared: list[tuple[nn.Module, Tensor, Tensor]] = []
        for (module, a_in, out), b_out in zip(layers, b_outs):
            if b_out is None:  # the losses reach this layer only through zero-gradient paths
                b_out = torch.zeros_like(out)
            a, b = _positions(module, a_in, b_out)
            prepared.append((module, a, b))
            a_g = a if a.dtype == dtype else a.to(dtype)
            b_g = b if b.dtype == dtype else b.to(dtype)
            _add_layer_gramian(p_total, a_g, b_g, module.bias is not None)
        vmask = structure.sample_known.to(dtype)
        g = _group_gramian(p_total, structure.sample_group, vmask, structure.num_groups)
        if fb_jac:
            g = g + gramian_of(fb_jac)
        return SampleGramianPrepared(
            g, layers=prepared, fallback=fallback, fallback_jacobian=fb_jac, vmask=vmask
        )

    def backward(self, call: Call, prepared: Prepared, weights: Tensor | None) -> None:
        assert weights is not None
        mine = own(prepared, SampleGramianPrepared)
        structure = call.options.structure
        assert structure is not None
        assert structure.sample_known is not None
        assert structure.sample_group is not None
        w = weights if weights.dtype == mine.vmask.dtype else weights.to(mine.vmask.dtype)
        c = w[structure.sample_group] * mine.vmask
        with torch.no_grad():
            updates: dict[int, Tensor] = {}
            for module, a, b in mine.layers:
                bc = b * (c if c.dtype == b.dtype else c.to(b.dtype))[:, None, None]
                weight = module.weight
                assert isinstance(weight, Tensor)
                flat_b, flat_a = bc.reshape(-1, bc.shape[-1]), a.reshape(-1, a.shape[-1])
                updates[id(weight)] = (flat_b.T @ flat_a).reshape(weight.shape)
                if isinstance(module.bias, Tensor):
                    updates[id(module.bias)] = bc.sum((0, 1))
            for p, j in zip(mine.fallback, mine.fallback_jacobian):
                updates[id(p)] = torch.tensordot(weights.to(j.dtype), j, dims=1)
            for p in call.params:
                _write.add_grad(p, updates[id(p)], fresh=True)
