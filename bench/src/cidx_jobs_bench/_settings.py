"""What a run measures and how much: sizes, repetitions, folders."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

#: The sections a run can measure, in the order they run.
SECTIONS = (
    "check",
    "ops",
    "query",
    "cleanup",
    "indexes",
    "large-cleanup",
    "size",
    "concurrency",
    "async",
    "peers",
    "postgres",
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The parameters of one run; :func:`defaults` gives the default and ``--quick`` ones.

    :ivar sizes: jobs in each query database.
    :ivar users: users the jobs of a query database belong to.
    :ivar ops: timed calls per single-row operation and contender.
    :ivar rounds: interleaved rounds the single-row calls are split into.
    :ivar base_jobs: jobs already in the database the single-row operations, the
        1,000-job cleanup and the concurrency runs work on.
    :ivar query_reps: timed calls per query and contender.
    :ivar offset_reps: timed calls of the deep offset page (slow by nature).
    :ivar cleanup_rounds: repetitions of the 1,000-job cleanup.
    :ivar large_cleanup: expired jobs in the cleanup that races a writer.
    :ivar size_jobs: job counts whose database size is measured.
    :ivar threads: threads in the multi-threaded run.
    :ivar processes: processes in the multi-process run.
    :ivar duration: seconds each concurrency run lasts.
    :ivar pool_size: the SQLite store's ``pool_size`` in the threads run (None: its default).
    :ivar peer_ops: timed calls per peer operation.
    :ivar peer_size_jobs: jobs stored in each peer to measure its file size.
    :ivar memory_max_jobs: the largest query database also loaded into the memory backend.
    :ivar size_api_max: the largest job count written through the public API for the size
        figure; larger counts are bulk-inserted with the backend's SQL (the smaller counts
        show that both give the same file).
    :ivar large_cleanup_floor: also run the racing cleanup on the floor.
    :ivar index_ops: timed calls per write and schema in the indexes section.
    :ivar index_budget: seconds of timed calls per query shape and index in the indexes
        section (the calls of a slow shape are fewer, down to ``index_min_reps``).
    :ivar index_min_reps: the fewest timed calls per query shape and contender there.
    :ivar index_max_reps: the most timed calls per query shape and contender there.
    :ivar index_db_size: the database the indexes section reads (None: the largest size).
    :ivar async_ops: timed calls per operation and API in the async section's overhead
        rows on SQLite (PostgreSQL: half as many).
    :ivar async_clients: concurrent HTTP connections in the async section's lag runs.
    :ivar async_rate: requests per second, all clients together, of the async section's
        paced lag runs (its other runs are a closed loop: as fast as the server answers).
    :ivar lag_duration: seconds each of the async section's loaded lag runs lasts.
    :ivar postgres: also measure the async section on PostgreSQL (when a server answers).
    :ivar postgres_url: the PostgreSQL configuration the async section uses (None:
        ``$CIDX_JOBS_POSTGRES_URL``, else the local test server); it works in a throwaway
        schema and drops it.
    :ivar postgres_jobs: jobs in the postgres section's throwaway schema (the filtered
        page is measured on them, and every other part of that section works among them).
    :ivar postgres_ops: timed calls per single-row operation and contender in the postgres
        section.
    :ivar postgres_peer: also measure procrastinate in the postgres section (when installed).
    :ivar sections: which sections to run.
    :ivar cache_dir: where built databases are kept between runs.
    :ivar work_dir: where the run's scratch databases go (removed afterwards).
    """

    quick: bool
    sizes: tuple[int, ...]
    users: int
    ops: int
    rounds: int
    base_jobs: int
    query_reps: int
    offset_reps: int
    cleanup_rounds: int
    large_cleanup: int
    size_jobs: tuple[int, ...]
    threads: int
    processes: int
    duration: float
    peer_ops: int
    peer_size_jobs: int
    memory_max_jobs: int
    size_api_max: int
    large_cleanup_floor: bool
    sections: tuple[str, ...]
    cache_dir: Path
    work_dir: Path
    pool_size: int | None = None
    index_ops: int = 5000
    index_budget: float = 0.5
    index_min_reps: int = 3
    index_max_reps: int = 300
    index_db_size: int | None = None
    async_ops: int = 2000
    async_clients: int = 200
    async_rate: float = 500.0
    lag_duration: float = 3.0
    postgres: bool = True
    postgres_url: str | None = None
    postgres_jobs: int = 1_000_000
    postgres_ops: int = 2000
    postgres_peer: bool = True

    def log(self, message: str) -> None:
        """Progress for the person waiting, on stderr (stdout carries the table)."""
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    @property
    def ops_db_size(self) -> int:
        """The query database the single-row operations start from (the smallest size at
        least ``base_jobs``, else the largest)."""
        fitting = [size for size in sorted(self.sizes) if size >= self.base_jobs]
        return fitting[0] if fitting else max(self.sizes)


def default_cache_dir() -> Path:
    """``$CIDX_JOBS_BENCH_CACHE``, else ``$XDG_CACHE_HOME/cidx-jobs-bench``, else ``~/.cache/...``."""
    explicit = os.environ.get("CIDX_JOBS_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cidx-jobs-bench"


def defaults(*, quick: bool, cache_dir: Path, work_dir: Path) -> Settings:
    """The default run (about 3-4 minutes on 2 cores) or the ``--quick`` one (under one)."""
    if quick:
        return Settings(
            quick=True,
            sizes=(10_000, 100_000),
            users=1000,
            ops=500,
            rounds=5,
            base_jobs=10_000,
            query_reps=60,
            offset_reps=4,
            cleanup_rounds=4,
            large_cleanup=10_000,
            size_jobs=(10_000,),
            threads=8,
            processes=4,
            duration=1.0,
            peer_ops=200,
            peer_size_jobs=1_000,
            memory_max_jobs=10_000,
            size_api_max=2_000,
            large_cleanup_floor=False,
            index_ops=500,
            index_budget=0.25,
            index_min_reps=3,
            index_max_reps=60,
            async_ops=300,
            lag_duration=1.5,
            postgres_jobs=100_000,
            postgres_ops=200,
            sections=SECTIONS,
            cache_dir=cache_dir,
            work_dir=work_dir,
        )
    return Settings(
        quick=False,
        sizes=(10_000, 100_000, 1_000_000),
        users=1000,
        # Single-row calls take microseconds: many calls in many rounds keep the medians
        # steady on a noisy machine (3,000 in 15 rounds moved the ratios by 0.2x run to run).
        ops=10_000,
        rounds=25,
        base_jobs=100_000,
        query_reps=300,
        offset_reps=8,
        cleanup_rounds=8,
        large_cleanup=100_000,
        size_jobs=(10_000, 100_000),
        threads=8,
        processes=4,
        duration=3.0,
        peer_ops=1000,
        peer_size_jobs=5_000,
        memory_max_jobs=100_000,
        size_api_max=10_000,
        large_cleanup_floor=True,
        sections=SECTIONS,
        cache_dir=cache_dir,
        work_dir=work_dir,
    )
