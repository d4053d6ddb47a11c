"""Aggregators: weightings of the K x K Gramian of label-group gradients (and a few that need J).

Every aggregator constructs with no arguments (its paper's defaults, TorchJD 0.18's conventions
where TorchJD ships it) and reads K from its input. Two types, told apart by ``isinstance``:
a :class:`GramianWeighting` gives ``agg.weights(G) -> (K,)`` (the update is ``J^T w``); a
:class:`JacobianAggregator` gives ``agg.aggregate(J) -> (P,)`` and has no ``weights``.
``Aggregator`` is their union (an alias for annotations and ``isinstance``, not a base class);
:class:`WeightingWrapper` is the base of weightings that wrap another (``CRMOGM``,
``lg.aggregation.Amortized``, ``synchronized``). :func:`available` lists the public ones by name.

All solve in vectorized torch on the input's device: no per-row Python loops, no numpy,
quadprog or cvxpy. The ones that solve an optimization problem certify their answer (optimality
conditions checked, robust fallback where the check fails; counted in ``agg.diagnostics``, a
:class:`SolverDiagnostics`).

Example:
    >>> import torch
    >>> import labelgrad as lg
    >>> J = torch.tensor([[1.0, 0.0], [-0.5, 1.0]])
    >>> w = lg.aggregators.UPGrad().weights(J @ J.T)
    >>> bool(((J @ (J.T @ w)) >= -1e-6).all())  # no label's loss goes up to first order
    True
    >>> "UPGrad" in lg.aggregators.available()
    True
"""

from labelgrad.aggregators.aggregator_types import (
    Aggregator,
    GramianWeighting,
    JacobianAggregator,
    WeightingWrapper,
)
from labelgrad.aggregators.aligned_mtl import AlignedMTL
from labelgrad.aggregators.balance import FairGrad, NashMTL
from labelgrad.aggregators.basic import Mean, Random, Sum
from labelgrad.aggregators.cagrad import CAGrad
from labelgrad.aggregators.conflict_free import ConFIG
from labelgrad.aggregators.constant import Constant
from labelgrad.aggregators.cr_mogm import CRMOGM
from labelgrad.aggregators.diagnostics import SolverDiagnostics
from labelgrad.aggregators.double_sampling import MoDo, SDMGrad
from labelgrad.aggregators.dual_cone import DualProj, UPGrad
from labelgrad.aggregators.excess_mtl import ExcessMTL
from labelgrad.aggregators.graddrop import GradDrop
from labelgrad.aggregators.gradient_cosines import conflicts
from labelgrad.aggregators.gradvac import GradVac
from labelgrad.aggregators.imtlg import IMTLG
from labelgrad.aggregators.mgda import MGDA
from labelgrad.aggregators.pcd import PCD
from labelgrad.aggregators.pcgrad import PCGrad
from labelgrad.aggregators.registry import available
from labelgrad.aggregators.robust import Krum, TrimmedMean

__all__ = [
    "CRMOGM",
    "IMTLG",
    "MGDA",
    "PCD",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "Constant",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "GramianWeighting",
    "JacobianAggregator",
    "Krum",
    "Mean",
    "MoDo",
    "NashMTL",
    "PCGrad",
    "Random",
    "SDMGrad",
    "SolverDiagnostics",
    "Sum",
    "TrimmedMean",
    "UPGrad",
    "WeightingWrapper",
    "available",
    "conflicts",
]
