"""labelgrad: label-aware gradient control for PyTorch.

Three levels that compose: policies that transform dL/dlogits per sample and per class
(:mod:`labelgrad.policies`), per-class update rules for label-owned parameters
(:class:`labelgrad.RowRules`), and aggregation of per-label gradients on shared parameters
(:mod:`labelgrad.aggregation`).
"""

from labelgrad import aggregation, aggregators, report
from labelgrad.accumulation import accumulation_window
from labelgrad.aggregation import aggregate_backward, explain_engine, per_label_losses
from labelgrad.aggregators.conflicts import conflicts
from labelgrad.policies import (
    Chain,
    ClassWeights,
    ClipPerClass,
    ClipPerSample,
    EQLv2,
    FreezeClasses,
    GradContext,
    GradMonitor,
    Mask,
    MaskUnknown,
    Policy,
    PosNegWeights,
    Schedule,
    StatefulPolicy,
    chain,
    class_weights,
    clip_per_class,
    clip_per_sample,
    eqlv2,
    freeze_classes,
    mask,
    mask_unknown,
    monitor,
    no_state_update,
    pos_neg_weights,
    schedule,
)
from labelgrad.rows import Router, RowRules, route
from labelgrad.targets import Encoding, Targets, TargetsLike

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "ClassWeights",
    "ClipPerClass",
    "ClipPerSample",
    "EQLv2",
    "Encoding",
    "FreezeClasses",
    "GradContext",
    "GradMonitor",
    "Mask",
    "MaskUnknown",
    "Policy",
    "PosNegWeights",
    "Router",
    "RowRules",
    "Schedule",
    "StatefulPolicy",
    "Targets",
    "TargetsLike",
    "__version__",
    "accumulation_window",
    "aggregate_backward",
    "aggregation",
    "aggregators",
    "chain",
    "class_weights",
    "clip_per_class",
    "clip_per_sample",
    "conflicts",
    "eqlv2",
    "explain_engine",
    "freeze_classes",
    "mask",
    "mask_unknown",
    "monitor",
    "no_state_update",
    "per_label_losses",
    "pos_neg_weights",
    "report",
    "route",
    "schedule",
]
