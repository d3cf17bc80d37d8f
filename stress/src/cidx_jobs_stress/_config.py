"""How big a stress run is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["StressConfig"]


@dataclasses.dataclass(frozen=True)
class StressConfig:
    """The size and the randomness of a run.

    :ivar quick: the short version of every scenario (what CI runs).
    :ivar seed: every random choice derives from it, so a run can be repeated
        (kill timing and thread interleaving still vary).
    :ivar seconds: how long the concurrency scenario runs its workers.
    :ivar kills: how many times the crash scenario kills its writer.
    :ivar workdir: where the databases go (a fresh temporary folder by default).
    """

    quick: bool = False
    seed: int = 0
    seconds: float | None = None
    kills: int | None = None
    workdir: Path | None = None

    @property
    def crash_kills(self) -> int:
        """Writer processes the crash scenario kills."""
        if self.kills is not None:
            return self.kills
        return 24 if self.quick else 300

    @property
    def concurrency_seconds(self) -> float:
        """How long the concurrency workers run."""
        if self.seconds is not None:
            return self.seconds
        return 3.0 if self.quick else 30.0

    def scaled(self, quick: int, full: int) -> int:
        """``quick`` in a quick run, else ``full``."""
        return quick if self.quick else full
