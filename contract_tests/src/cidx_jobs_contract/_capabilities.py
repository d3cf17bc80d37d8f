"""Capability flags: the optional behaviour a backend declares, and the tests that need it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs

from cidx_jobs.backend import Capability

_F = TypeVar("_F", bound=Callable[..., Any])
_REQUIRES_ATTRIBUTE = "__cidx_contract_requires__"


def _flag(default: bool, doc: str) -> Any:
    return attrs.field(default=default, metadata={"doc": doc})


@attrs.frozen(kw_only=True)
class Capabilities:
    """The optional behaviour a backend has: what it declared when it registered
    (:class:`cidx_jobs.backend.Capability`), narrowed or widened by a ``capabilities``
    fixture or the command line's ``--without``/``--with``.

    Each flag is a named boolean with a one-line description; a contract test
    that needs a flag the backend does not declare is skipped, and the skip
    reason names the flag. Everything not listed here is mandatory.
    """

    persistent: bool = _flag(False, "data survives close() and reopening the same storage")
    """Data survives ``close()`` and reopening the same storage (tests use ``reopen``)."""

    concurrent_threads: bool = _flag(False, "many threads may call one store at the same time")
    """Many threads may call one store at the same time."""

    multi_process: bool = _flag(
        False, "several processes (and store handles) may use the same storage at once"
    )
    """Several processes (and store handles) may use the same storage at once (tests use
    ``store_config``)."""

    fault_injection: bool = _flag(
        False, "the storage's fault_injector() injects driver failures for the suite"
    )
    """The storage's ``fault_injector()`` lets the suite inject driver failures."""

    @classmethod
    def from_declared(cls, declared: Iterable[Capability | str]) -> Capabilities:
        """The flags of the :class:`~cidx_jobs.backend.Capability` values a backend declared."""
        return cls(**{Capability(flag).value: True for flag in declared})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The names of every flag."""
        return tuple(field.name for field in attrs.fields(cls))

    @classmethod
    def describe(cls, name: str) -> str:
        """The one-line description of the flag ``name``.

        :raises ValueError: there is no such flag.
        """
        for field in attrs.fields(cls):
            if field.name == name:
                return str(field.metadata["doc"])
        raise ValueError(f"unknown capability {name!r}; the flags are: {', '.join(cls.names())}")

    def missing(self, names: Iterable[str]) -> list[str]:
        """Which of ``names`` this backend does not declare."""
        return [name for name in names if not getattr(self, name)]


def requires(*flags: str) -> Callable[[_F], _F]:
    """Mark a contract test as needing the capability ``flags``.

    The test is skipped, with a reason naming each missing flag, on a backend
    whose ``capabilities`` fixture does not declare them all.

    :raises ValueError: a flag is not a :class:`Capabilities` field.
    """
    for flag in flags:
        Capabilities.describe(flag)

    def mark(function: _F) -> _F:
        setattr(
            function, _REQUIRES_ATTRIBUTE, (*getattr(function, _REQUIRES_ATTRIBUTE, ()), *flags)
        )
        return function

    return mark


def required_by(function: object) -> tuple[str, ...]:
    """The flags a test function was marked with by :func:`requires`."""
    flags: tuple[str, ...] = getattr(function, _REQUIRES_ATTRIBUTE, ())
    return flags


def skip_reason(missing: Iterable[str]) -> str:
    """The reason shown for a test skipped because of ``missing`` capabilities."""
    needs = "; ".join(f"{name!r}: {Capabilities.describe(name)}" for name in missing)
    return f"needs capability {needs} (not declared by the backend)"
