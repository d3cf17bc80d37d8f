"""cidx-jobs-contract: the contract suite every cidx-jobs backend must pass.

The stable public names (a backend's tests rely on exactly these):

* :class:`JobStoreContract`: every contract test; subclass it as ``TestXxx`` in
  your test module. The individual mixins are exported too (:class:`CrudContract`,
  :class:`StatusContract`, :class:`QueryContract`, :class:`PaginationContract`,
  :class:`IsolationContract`, :class:`CleanupContract`, :class:`CheckpointContract`,
  :class:`TransactionContract`, :class:`ConcurrencyContract`,
  :class:`RoundTripContract`, :class:`ValidationContract`, :class:`CopyContract`,
  :class:`EventContract`, :class:`FaultContract`, :class:`TimeRangeContract`,
  :class:`PersistenceContract`, :class:`StatefulContract`, :class:`LifecycleContract`,
  :class:`LimitContract`),
  all built on :class:`StoreFixtures`.
* :class:`AsyncApiFixtures`: mix it in before :class:`JobStoreContract`
  (``class TestXxxAsync(AsyncApiFixtures, JobStoreContract)``) to run the same
  suite through :class:`~cidx_jobs.AsyncJobPersistence`, driven from the sync
  tests by :class:`AsyncDriven`, so the two APIs cannot drift.
* Fixtures (pytest fixtures defined as methods):

  - ``base_config`` (required): the URL or mapping naming the backend, e.g.
    ``"sqlite://"``. Everything else comes from the backend's registration.
  - ``backend``: the registered :class:`~cidx_jobs.backend.Backend` it names.
  - ``capabilities``: what the backend declared when it registered (a
    :class:`Capabilities`); override it to narrow or widen the run.
  - ``store_config``: the configuration of a fresh, isolated storage for one
    test, made (and removed afterwards) by the backend's scratch factory;
    override it for a backend that registered none.
  - ``store_settings``, ``store``, ``reopen``: the suite builds every store
    with ``open_persistence(store_config, settings=store_settings)``, whose
    clock is the suite's; ``clock`` makes that clock a :class:`ManualClock`.

* :class:`Capabilities` flags: ``persistent``, ``concurrent_threads``,
  ``multi_process``, ``fault_injection``. Tests needing an undeclared flag are
  skipped with a reason naming it.
* :func:`requires`: the decorator that marks a test as needing flags.
* :class:`ManualClock`: the clock the suite installs in a store for exact timestamps.
* :class:`ReferenceModel`: the plain in-Python model the stateful test compares with.
* ``python -m cidx_jobs_contract URL [pytest args]`` (:func:`main`): runs the
  whole suite on any installed backend, with the capabilities it declares;
  each test gets a storage from the backend's scratch factory, and the run
  leaves nothing behind.

Example::

    import pytest
    from cidx_jobs_contract import JobStoreContract

    class TestMyBackend(JobStoreContract):
        @pytest.fixture
        def base_config(self):
            return "mybackend://"
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pytest

#: The modules holding contract tests. pytest rewrites their ``assert`` statements (so a
#: failure shows the values compared) when they are marked before they are imported.
ASSERTING_MODULES = tuple(
    f"{__name__}.{module}"
    for module in (
        "_async_api",
        "_base",
        "_checkpoints",
        "_cleanup",
        "_concurrency",
        "_contract",
        "_crud",
        "_edges",
        "_events",
        "_faults",
        "_fencing",
        "_lifecycle",
        "_limits",
        "_persistent",
        "_query",
        "_roundtrip",
        "_stateful",
        "_status",
        "_transactions",
    )
)
pytest.register_assert_rewrite(*ASSERTING_MODULES)

# Public name -> the module defining it. Imported on first use, so that
# `python -m cidx_jobs_contract` imports nothing of the suite before pytest starts
# (which could then neither rewrite its asserts nor load Hypothesis' plugin cleanly).
_EXPORTS = {
    "AsyncApiFixtures": "_async_api",
    "AsyncDriven": "_async_api",
    "Capabilities": "_capabilities",
    "CheckpointContract": "_checkpoints",
    "CleanupContract": "_cleanup",
    "ConcurrencyContract": "_concurrency",
    "CopyContract": "_roundtrip",
    "CrudContract": "_crud",
    "EventContract": "_events",
    "FaultContract": "_faults",
    "FencingContract": "_fencing",
    "IsolationContract": "_query",
    "JobStoreContract": "_contract",
    "LifecycleContract": "_lifecycle",
    "LimitContract": "_limits",
    "ManualClock": "_base",
    "PaginationContract": "_query",
    "PersistenceContract": "_persistent",
    "QueryContract": "_query",
    "ReferenceModel": "_model",
    "RoundTripContract": "_roundtrip",
    "StatefulContract": "_stateful",
    "StatusContract": "_status",
    "StoreFixtures": "_base",
    "TimeRangeContract": "_edges",
    "TransactionContract": "_transactions",
    "ValidationContract": "_roundtrip",
    "main": "_cli",
    "requires": "_capabilities",
}

if TYPE_CHECKING:
    from ._async_api import AsyncApiFixtures, AsyncDriven
    from ._base import ManualClock, StoreFixtures
    from ._capabilities import Capabilities, requires
    from ._checkpoints import CheckpointContract
    from ._cleanup import CleanupContract
    from ._cli import main
    from ._concurrency import ConcurrencyContract
    from ._contract import JobStoreContract
    from ._crud import CrudContract
    from ._edges import TimeRangeContract
    from ._events import EventContract
    from ._faults import FaultContract
    from ._fencing import FencingContract
    from ._lifecycle import LifecycleContract
    from ._limits import LimitContract
    from ._model import ReferenceModel
    from ._persistent import PersistenceContract
    from ._query import IsolationContract, PaginationContract, QueryContract
    from ._roundtrip import CopyContract, RoundTripContract, ValidationContract
    from ._stateful import StatefulContract
    from ._status import StatusContract
    from ._transactions import TransactionContract


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "AsyncApiFixtures",
    "AsyncDriven",
    "Capabilities",
    "CheckpointContract",
    "CleanupContract",
    "ConcurrencyContract",
    "CopyContract",
    "CrudContract",
    "EventContract",
    "FaultContract",
    "FencingContract",
    "IsolationContract",
    "JobStoreContract",
    "LifecycleContract",
    "LimitContract",
    "ManualClock",
    "PaginationContract",
    "PersistenceContract",
    "QueryContract",
    "ReferenceModel",
    "RoundTripContract",
    "StatefulContract",
    "StatusContract",
    "StoreFixtures",
    "TimeRangeContract",
    "TransactionContract",
    "ValidationContract",
    "main",
    "requires",
]
