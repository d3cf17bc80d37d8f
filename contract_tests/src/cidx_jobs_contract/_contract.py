"""JobStoreContract: every mixin of the suite in one class."""

from __future__ import annotations

from ._checkpoints import CheckpointContract
from ._cleanup import CleanupContract
from ._concurrency import ConcurrencyContract
from ._crud import CrudContract
from ._edges import TimeRangeContract
from ._events import EventContract
from ._faults import FaultContract
from ._fencing import FencingContract
from ._lifecycle import LifecycleContract
from ._limits import LimitContract
from ._persistent import PersistenceContract
from ._query import IsolationContract, PaginationContract, QueryContract
from ._roundtrip import CopyContract, RoundTripContract, ValidationContract
from ._stateful import StatefulContract
from ._status import StatusContract
from ._transactions import TransactionContract


class JobStoreContract(
    CrudContract,
    StatusContract,
    QueryContract,
    PaginationContract,
    IsolationContract,
    CleanupContract,
    CheckpointContract,
    TransactionContract,
    ConcurrencyContract,
    RoundTripContract,
    ValidationContract,
    CopyContract,
    EventContract,
    FaultContract,
    TimeRangeContract,
    PersistenceContract,
    StatefulContract,
    LifecycleContract,
    LimitContract,
    FencingContract,
):
    """Every contract test. Subclass it as ``Test...`` in a backend's tests and override
    ``base_config`` (the configuration naming the backend, e.g. ``"sqlite://"``).

    The class has no ``Test`` prefix, so pytest never collects it on its own.
    """
