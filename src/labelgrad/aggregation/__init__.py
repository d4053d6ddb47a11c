"""Level 3: aggregation of per-label gradients on shared parameters.

K label (or label-group) losses -> a K x K Gramian estimate (exact, representation, parameter
subset, per-sample for class groups, amortized) -> weights from an aggregator -> one backward.
"""

from labelgrad.aggregation.amortized import Amortized
from labelgrad.aggregation.backward import (
    AggregationResult,
    Aggregator,
    aggregate_backward,
    explain_engine,
)
from labelgrad.aggregation.losses import LossStructure, group_ids, loss_structure, per_label_losses
from labelgrad.aggregation.sample_gramian import Tracker, track

__all__ = [
    "AggregationResult",
    "Aggregator",
    "Amortized",
    "LossStructure",
    "Tracker",
    "aggregate_backward",
    "explain_engine",
    "group_ids",
    "loss_structure",
    "per_label_losses",
    "track",
]
