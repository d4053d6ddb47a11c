"""The one public registry of aggregator names: what the library and the application accept.

Example:
    >>> import labelgrad as lg
    >>> names = lg.aggregators.available()
    >>> names["UPGrad"] is lg.aggregators.UPGrad
    True
"""

from __future__ import annotations

from labelgrad.aggregators.aggregator_types import GramianWeighting, JacobianAggregator
from labelgrad.aggregators.aligned_mtl import AlignedMTL
from labelgrad.aggregators.balance import FairGrad, NashMTL
from labelgrad.aggregators.basic import Mean, Random, Sum
from labelgrad.aggregators.cagrad import CAGrad
from labelgrad.aggregators.conflict_free import ConFIG
from labelgrad.aggregators.constant import Constant
from labelgrad.aggregators.cr_mogm import CRMOGM
from labelgrad.aggregators.double_sampling import MoDo, SDMGrad
from labelgrad.aggregators.dual_cone import DualProj, UPGrad
from labelgrad.aggregators.excess_mtl import ExcessMTL
from labelgrad.aggregators.graddrop import GradDrop
from labelgrad.aggregators.gradvac import GradVac
from labelgrad.aggregators.imtlg import IMTLG
from labelgrad.aggregators.mgda import MGDA
from labelgrad.aggregators.pcd import PCD
from labelgrad.aggregators.pcgrad import PCGrad
from labelgrad.aggregators.robust import Krum, TrimmedMean

__all__ = ["available"]

# Listed, not discovered: a new aggregator is added here on purpose (the tests check that this
# equals the aggregator classes of ``lg.aggregators.__all__``).
_AGGREGATORS: tuple[type[GramianWeighting] | type[JacobianAggregator], ...] = (
    AlignedMTL,
    CAGrad,
    CRMOGM,
    ConFIG,
    Constant,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradDrop,
    GradVac,
    IMTLG,
    Krum,
    MGDA,
    Mean,
    MoDo,
    NashMTL,
    PCD,
    PCGrad,
    Random,
    SDMGrad,
    Sum,
    TrimmedMean,
    UPGrad,
)


def available() -> dict[str, type[GramianWeighting] | type[JacobianAggregator]]:
    """The public aggregators by name, sorted by name: ``{"AlignedMTL": AlignedMTL, ...}``.

    Every class constructs with no arguments (its paper's defaults). A name is a key here exactly
    when ``lg.aggregators.<name>()`` is a usable aggregator: a
    :class:`~labelgrad.aggregators.GramianWeighting` (``weights(G) -> (K,)``) or a
    :class:`~labelgrad.aggregators.JacobianAggregator` (``aggregate(J) -> (P,)``); tell them
    apart with ``isinstance``. The bases, wrappers that need an argument
    (``lg.aggregation.Amortized``, ``synchronized``) and helper functions are not listed. The
    answer is a new dict on every call (changing it changes nothing here).

    Returns:
        A dict from name to class, in sorted name order.

    Example:
        >>> import torch
        >>> import labelgrad as lg
        >>> sorted(lg.aggregators.available())[:3]
        ['AlignedMTL', 'CAGrad', 'CRMOGM']
        >>> agg = lg.aggregators.available()["MGDA"]()
        >>> isinstance(agg, lg.aggregators.GramianWeighting)
        True
    """
    return {cls.__name__: cls for cls in sorted(_AGGREGATORS, key=lambda c: c.__name__)}
