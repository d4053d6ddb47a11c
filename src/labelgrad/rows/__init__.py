"""Level 2: per-class update rules for label-owned parameters, and optimizers routed by label.

:class:`RowRules` wraps any torch optimizer and acts on the update of the rows a class owns
(freeze, per-class learning rate and weight decay, skip classes absent from the batch, per-class
max-norm); :func:`route` steps separate optimizers only when their classes occur. Both are
:class:`LabelObserver`s: they take the labels of every micro-batch through ``observe``.
:func:`tau_normalize` and :func:`align_weights` rescale the rows of a trained head.
"""

from labelgrad.rows.observer import LabelObserver
from labelgrad.rows.posthoc import align_weights, tau_normalize
from labelgrad.rows.route import Router, route
from labelgrad.rows.rules import RowRules, present_classes

__all__ = [
    "LabelObserver",
    "Router",
    "RowRules",
    "align_weights",
    "present_classes",
    "route",
    "tau_normalize",
]
