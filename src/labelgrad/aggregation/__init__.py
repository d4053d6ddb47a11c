"""Level 3: aggregation of per-label gradients on shared parameters.

K label (or label-group) losses -> a K x K Gramian estimate (exact, representation, parameter
subset, per-sample for class groups, amortized) -> weights from an aggregator -> one backward.

Modules: ``losses`` (per_label_losses, LossStructure), ``backward`` (aggregate_backward,
explain_engine), ``engines/`` (one module per engine behind one protocol),
``per_label_jacobian`` (per-label Jacobians and Gramians), ``weighing`` (weights under the
nonfinite policy), ``tracker`` (layer records for the sample-Gramian engine), ``amortized``
(Amortized), ``graph_checks`` (``check_reaches``: a loss must reach the shared parameters),
``_warn`` (warnings given once; :func:`reset_warnings`).
"""

from labelgrad.aggregation._warn import reset_warnings
from labelgrad.aggregation.amortized import Amortized
from labelgrad.aggregation.backward import (
    AggregationResult,
    Aggregator,
    aggregate_backward,
    explain_engine,
)
from labelgrad.aggregation.losses import (
    LossStructure,
    find_structure,
    group_ids,
    loss_structure,
    per_label_losses,
)
from labelgrad.aggregation.tracker import Tracker, track

__all__ = [
    "AggregationResult",
    "Aggregator",
    "Amortized",
    "LossStructure",
    "Tracker",
    "aggregate_backward",
    "explain_engine",
    "find_structure",
    "group_ids",
    "loss_structure",
    "per_label_losses",
    "reset_warnings",
    "track",
]
