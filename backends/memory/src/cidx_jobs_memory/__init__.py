"""The in-memory cidx-jobs backend (``memory://``): fast, thread-safe, gone with the process."""

from __future__ import annotations

from ._store import MemoryStorage

__all__ = ["MemoryStorage"]
