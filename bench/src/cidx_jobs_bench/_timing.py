"""Timing calls in interleaved rounds, and the statistics the report shows."""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Call = Callable[[], object]


@dataclass
class Samples:
    """The per-call times of one contender, in nanoseconds, and the median of each round."""

    times_ns: list[int] = field(default_factory=list)
    round_medians_ns: list[float] = field(default_factory=list)
    #: Each round's thread CPU time per call (one clock read per chunk, so it costs nothing).
    round_cpu_ns: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        """How many calls were timed."""
        return len(self.times_ns)

    def median_us(self) -> float:
        """The median call, in microseconds."""
        return statistics.median(self.times_ns) / 1000

    def p99_us(self) -> float:
        """The 99th percentile call (nearest rank), in microseconds."""
        return percentile(self.times_ns, 99) / 1000

    def cpu_us(self) -> float | None:
        """The median over rounds of the CPU time per call, in microseconds.

        CPU time leaves out waiting (for the disk, for the CPU other processes hold), so a
        busy machine disturbs it less than wall time; it includes the kernel's work.
        """
        if not self.round_cpu_ns:
            return None
        return statistics.median(self.round_cpu_ns) / 1000

    def max_us(self) -> float:
        """The slowest call, in microseconds."""
        return max(self.times_ns) / 1000

    def spread(self) -> float | None:
        """How far the rounds' medians spread: (max - min) / overall median.

        A large spread means the machine was noisy while this was measured.
        """
        if len(self.round_medians_ns) < 2:
            return None
        overall = statistics.median(self.times_ns)
        if overall <= 0:
            return None
        return (max(self.round_medians_ns) - min(self.round_medians_ns)) / overall


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile of ``values`` by nearest rank."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def interleave(
    contenders: Mapping[str, Sequence[Call]],
    rounds: int,
    *,
    setup: Callable[[str, int], None] | None = None,
) -> dict[str, Samples]:
    """Time every call of every contender, one call at a time, in interleaved rounds.

    Each contender's calls are split into ``rounds`` equal chunks; round ``r`` runs chunk
    ``r`` of each contender in turn, starting with a different contender each round, so
    that drift of the machine (other processes, frequency changes) hits all alike. The
    garbage collector is off while calls are timed and runs between chunks.

    :param setup: called untimed as ``setup(contender, round)`` before each chunk.
    """
    names = list(contenders)
    result = {name: Samples() for name in names}
    clock = time.perf_counter_ns
    cpu_clock = time.thread_time_ns
    gc_was_enabled = gc.isenabled()
    # Collect once, then freeze what survives: later collections skip the (possibly
    # millions of) setup objects, so a collection between chunks stays cheap.
    gc.collect()
    gc.freeze()
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                calls = contenders[name]
                size = math.ceil(len(calls) / rounds)
                chunk = calls[r * size : (r + 1) * size]
                if not chunk:
                    continue
                if setup is not None:
                    setup(name, r)
                gc.collect(1)
                gc.disable()
                times = []
                cpu = cpu_clock()
                for call in chunk:
                    start = clock()
                    call()
                    times.append(clock() - start)
                cpu = cpu_clock() - cpu
                gc.enable()
                result[name].times_ns.extend(times)
                result[name].round_medians_ns.append(statistics.median(times))
                result[name].round_cpu_ns.append(cpu / len(chunk))
    finally:
        gc.unfreeze()
        if gc_was_enabled:
            gc.enable()
        else:  # pragma: no cover - the caller turned it off
            gc.disable()
    return result


def time_once(call: Call) -> int:
    """The nanoseconds one call took (the collector off meanwhile)."""
    gc.collect(1)
    gc.disable()
    try:
        start = time.perf_counter_ns()
        call()
        return time.perf_counter_ns() - start
    finally:
        gc.enable()
