"""Level 1: policies that transform dL/dlogits per sample and per class during backward."""

from labelgrad.policies.asymmetric_focus import AsymmetricFocus, asymmetric_focus
from labelgrad.policies.chain import Chain, chain
from labelgrad.policies.clipping import ClipPerClass, ClipPerSample, clip_per_class, clip_per_sample
from labelgrad.policies.eql import EQL, eql
from labelgrad.policies.eqlv2 import EQLv2, eqlv2
from labelgrad.policies.labels_trick import LabelsTrick, labels_trick
from labelgrad.policies.ldam import LDAM, ldam_drw
from labelgrad.policies.linear import LinearPolicy, Multiplier
from labelgrad.policies.logit_adjust import LogitAdjust, logit_adjust
from labelgrad.policies.masking import (
    FreezeClasses,
    Mask,
    MaskUnknown,
    freeze_classes,
    mask,
    mask_unknown,
)
from labelgrad.policies.monitor import GradMonitor, monitor
from labelgrad.policies.policy import GradContext, Policy, no_state_update, state_updates_enabled
from labelgrad.policies.schedule import Schedule, schedule
from labelgrad.policies.seesaw import Seesaw, seesaw
from labelgrad.policies.stateful import StatefulPolicy
from labelgrad.policies.weighting import ClassWeights, PosNegWeights, class_weights, pos_neg_weights

__all__ = [
    "EQL",
    "LDAM",
    "AsymmetricFocus",
    "Chain",
    "ClassWeights",
    "ClipPerClass",
    "ClipPerSample",
    "EQLv2",
    "FreezeClasses",
    "GradContext",
    "GradMonitor",
    "LabelsTrick",
    "LinearPolicy",
    "LogitAdjust",
    "Mask",
    "MaskUnknown",
    "Multiplier",
    "Policy",
    "PosNegWeights",
    "Schedule",
    "Seesaw",
    "StatefulPolicy",
    "asymmetric_focus",
    "chain",
    "class_weights",
    "clip_per_class",
    "clip_per_sample",
    "eql",
    "eqlv2",
    "freeze_classes",
    "labels_trick",
    "ldam_drw",
    "logit_adjust",
    "mask",
    "mask_unknown",
    "monitor",
    "no_state_update",
    "pos_neg_weights",
    "schedule",
    "seesaw",
    "state_updates_enabled",
]
