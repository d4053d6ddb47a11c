"""labelgrad: label-aware gradient control for PyTorch.

Three levels that compose: policies that transform dL/dlogits per sample and per class
(:mod:`labelgrad.policies`), per-class update rules for label-owned parameters
(:class:`labelgrad.RowRules`), and aggregation of per-label gradients on shared parameters
(:mod:`labelgrad.aggregation`).
"""

from labelgrad import aggregation, aggregators, report
from labelgrad._version import __version__
from labelgrad.accumulation import accumulation_window
from labelgrad.aggregation import aggregate_backward, explain_engine, per_label_losses
from labelgrad.aggregators.conflicts import conflicts
from labelgrad.class_counts import class_priors, effective_number_weights
from labelgrad.policies import (
    EQL,
    LDAM,
    AsymmetricFocus,
    Chain,
    ClassWeights,
    ClipPerClass,
    ClipPerSample,
    EQLv2,
    FreezeClasses,
    GradContext,
    GradMonitor,
    LogitAdjust,
    Mask,
    MaskUnknown,
    Policy,
    PosNegWeights,
    Schedule,
    Seesaw,
    StatefulPolicy,
    asymmetric_focus,
    chain,
    class_weights,
    clip_per_class,
    clip_per_sample,
    eql,
    eqlv2,
    freeze_classes,
    ldam_drw,
    logit_adjust,
    mask,
    mask_unknown,
    monitor,
    no_state_update,
    pos_neg_weights,
    schedule,
    seesaw,
)
from labelgrad.replay import ReplayProjection, project_replay
from labelgrad.rows import Router, RowRules, route
from labelgrad.targets import Encoding, Targets, TargetsLike

__all__ = [
    "EQL",
    "LDAM",
    "AsymmetricFocus",
    "Chain",
    "ClassWeights",
    "ClipPerClass",
    "ClipPerSample",
    "EQLv2",
    "Encoding",
    "FreezeClasses",
    "GradContext",
    "GradMonitor",
    "LogitAdjust",
    "Mask",
    "MaskUnknown",
    "Policy",
    "PosNegWeights",
    "ReplayProjection",
    "Router",
    "RowRules",
    "Schedule",
    "Seesaw",
    "StatefulPolicy",
    "Targets",
    "TargetsLike",
    "__version__",
    "accumulation_window",
    "aggregate_backward",
    "aggregation",
    "aggregators",
    "asymmetric_focus",
    "chain",
    "class_priors",
    "class_weights",
    "clip_per_class",
    "clip_per_sample",
    "conflicts",
    "effective_number_weights",
    "eql",
    "eqlv2",
    "explain_engine",
    "freeze_classes",
    "ldam_drw",
    "logit_adjust",
    "mask",
    "mask_unknown",
    "monitor",
    "no_state_update",
    "per_label_losses",
    "pos_neg_weights",
    "project_replay",
    "report",
    "route",
    "schedule",
    "seesaw",
]
