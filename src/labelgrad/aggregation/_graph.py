"""Small walks over the autograd graph: which leaves a tensor reaches, and what lies in between."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "leaves_reached",
    "linear_head_between",
    "nodes_reached",
    "reaches",
    "reaches_leaf",
    "variables",
]

# Node types that a Linear head (2-D addmm, or matmul on flattened positions) leaves behind.
_LINEAR_NODES = {
    "AddmmBackward0",
    "MmBackward0",
    "TBackward0",
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ReshapeAliasBackward0",
    "AddBackward0",
    "PermuteBackward0",
    "TransposeBackward0",
    "ExpandBackward0",
    "MatmulBackward0",
    "torch::autograd::AccumulateGrad",
}


def nodes_reached(root: Any, stop: Any = None) -> list[Any]:
    """Every autograd node reachable from ``root`` (not expanding ``stop``), in visit order."""
    seen: set[int] = set()
    out: list[Any] = []
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        if node is stop:
            continue
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in seen:
                stack.append(nxt)
    return out


def leaves_reached(tensor: Tensor, stop: Any = None) -> list[Tensor]:
    """The leaf tensors (parameters) whose gradient a backward from ``tensor`` would write."""
    if tensor.grad_fn is None:
        return [tensor] if tensor.requires_grad else []
    return variables(nodes_reached(tensor.grad_fn, stop))


def variables(nodes: list[Any]) -> list[Tensor]:
    """The leaf tensors of the AccumulateGrad nodes among ``nodes``."""
    leaves = []
    for node in nodes:
        var = getattr(node, "variable", None)
        if isinstance(var, Tensor):
            leaves.append(var)
    return leaves


def linear_head_between(logits: Tensor, features: Tensor, head: torch.nn.Linear) -> bool:
    """True when ``logits`` is ``head(features)`` up to reshapes and permutations.

    Anything else between them (a policy gate, an activation, another layer) makes it False, so
    the closed-form representation Gramian is used only where it is exact.
    """
    if logits.grad_fn is None:
        return False
    stop = features.grad_fn
    allowed = {id(head.weight)}
    if head.bias is not None:
        allowed.add(id(head.bias))
    reached_features = False
    for node in nodes_reached(logits.grad_fn, stop):
        if stop is not None and node is stop:
            reached_features = True
            continue
        if node.name() not in _LINEAR_NODES:
            return False
        var = getattr(node, "variable", None)
        if isinstance(var, Tensor):
            if var is features:
                reached_features = True
            elif id(var) not in allowed:
                return False
    return reached_features


def reaches(root: Any, target: Any) -> bool:
    """Whether the autograd node ``target`` is reachable from ``root`` (stops when found)."""
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if node is target:
            return True
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return False


def reaches_leaf(tensor: Tensor, leaf: Tensor) -> bool:
    """Whether a backward from ``tensor`` would write ``leaf``'s gradient."""
    return any(var is leaf for var in leaves_reached(tensor))
