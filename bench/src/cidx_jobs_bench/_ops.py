"""Single-row operations: one call, one statement, one transaction each.

Contenders, each on its own copy of the same base database:

* ``sqlite``: the public API of the SQLite backend, opened with ``open_persistence``;
* ``memory``: the public API of the memory backend, holding the same jobs;
* ``sqlite primitive``: the backend's storage, ``store.storage.insert_job`` ..., without
  core's validation, encoding, policy hooks and events: a diagnostic that splits our
  overhead between core and backend;
* ``floor``: raw ``sqlite3`` executing the backend's statement with values bound, in
  autocommit (so the statement commits), fetching tuples;
* ``floor (story schema)``, for ``save_job`` only: the floor's INSERT into the same database
  rebuilt with only the two indexes of issue 14's story schema (``(user_id, status,
  created_at)`` and ``(created_at)``): the baseline the backend's schema is measured against.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any

from cidx_jobs import Checkpoint, JobPersistence, JobStatus, SyncJob

from . import _data, _indexes, _memory, _report, _sqlite
from ._report import Report
from ._settings import Settings
from ._timing import Call, Samples, interleave

SQLITE, MEMORY, PRIMITIVE, FLOOR = "sqlite", "memory", "sqlite primitive", "floor"
STORY_FLOOR = "floor (story schema)"
HEADERS = [
    "operation",
    "contender",
    "median µs",
    "p99 µs",
    "x floor",
    "CPU µs",
    "x floor (CPU)",
    "round spread",
]
CHECKPOINT_DATA: dict[str, Any] = {
    "files_done": 1200,
    "files_total": 4810,
    "last": "src/app/main.py",
    "commit": "4f2a9c1e",
}


def _encode(value: dict[str, Any]) -> str:
    # What core binds: compact JSON, UTF-8 kept (cidx_jobs._validate.encode_json).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def add_rows(
    section: _report.Section,
    operation: str,
    samples: dict[str, Samples],
    *,
    floor: str = FLOOR,
    **extra: Any,
) -> None:
    """One row per contender, with its ratio to ``floor``."""
    floor_median = samples[floor].median_us() if floor in samples else None
    floor_cpu = samples[floor].cpu_us() if floor in samples else None
    for name, sample in samples.items():
        median = sample.median_us()
        ratio = median / floor_median if floor_median else None
        cpu = sample.cpu_us()
        cpu_ratio = cpu / floor_cpu if cpu is not None and floor_cpu else None
        section.add(
            [
                operation,
                name,
                _report.us(median),
                _report.us(sample.p99_us()),
                _report.ratio(ratio),
                _report.us(cpu),
                _report.ratio(cpu_ratio),
                _report.pct(sample.spread()),
            ],
            operation=operation,
            contender=name,
            median_us=median,
            p99_us=sample.p99_us(),
            max_us=sample.max_us(),
            ratio_to_floor=ratio,
            cpu_us=cpu,
            cpu_ratio_to_floor=cpu_ratio,
            round_spread=sample.spread(),
            calls=sample.n,
            **extra,
        )


def run(settings: Settings, report: Report) -> None:
    """Measure save, load, status and progress updates, checkpoint save and load."""
    base = _sqlite.query_db(settings.cache_dir, settings.ops_db_size, settings.users, settings.log)
    settings.log(f"single-row operations on a {settings.ops_db_size:,}-job database ...")
    paths = {
        name: _sqlite.copy_db(base, settings.work_dir / f"ops-{i}.db")
        for i, name in enumerate((SQLITE, PRIMITIVE, FLOOR))
    }
    paths[STORY_FLOOR] = _sqlite.copy_db(
        _indexes.story_db(settings, base), settings.work_dir / "ops-story.db"
    )
    store = _sqlite.open_store(paths[SQLITE])
    primitive = _sqlite.open_store(paths[PRIMITIVE])
    raw = _sqlite.raw_connect(paths[FLOOR])
    raw_story = _sqlite.raw_connect(paths[STORY_FLOOR])
    memory = _memory.from_db(base)
    section = report.section(
        "ops",
        f"Single-row operations (one call = one transaction; database of "
        f"{settings.ops_db_size:,} jobs; µs per call)",
        HEADERS,
    )
    try:
        _measure(settings, section, store, memory, primitive, raw, raw_story)
    finally:
        store.close()
        primitive.close()
        memory.close()
        raw.close()
        raw_story.close()
        for path in paths.values():
            _sqlite.remove_db(path)
    section.notes.append(
        f"{settings.ops:,} calls per contender and operation. "
        "x floor: median / the floor's median (target ≤ 1.5x for the sqlite backend). "
        "CPU µs: the thread's CPU time per call (median of the rounds' means), which "
        "leaves out waiting for the disk and for other processes. "
        "floor: raw sqlite3 running the backend's own statement, values bound, autocommit. "
        "sqlite primitive: the backend's storage method without core's validation, "
        "encoding, hooks and events (diagnostic). round spread: (max - min) of the "
        f"{settings.rounds} rounds' medians / the median: the machine's noise. "
        "floor (story schema): the floor's INSERT into the same jobs with only the two "
        "indexes of issue 14's story schema, (user_id, status, created_at) and (created_at); "
        "its x floor is its median / the floor's."
    )
    story = [row for row in section.data if "ratio_to_story_floor" in row]
    if story:
        section.notes.append(
            "save_job against the story schema's floor: "
            + ", ".join(f"{row['contender']} {row['ratio_to_story_floor']:.2f}x" for row in story)
            + "."
        )


def _measure(
    settings: Settings,
    section: _report.Section,
    store: JobPersistence,
    memory: JobPersistence,
    primitive: JobPersistence,
    raw: Any,
    raw_story: Any,
) -> None:
    n = settings.ops
    rounds = settings.rounds
    jobs = _data.new_jobs(seed=101, count=n, users=settings.users)
    metadata = [_encode(job.metadata) for job in jobs]
    # The floor binds what the backend binds, the store's lease stamp included.
    owner = _sqlite.owner_of(store)
    job_params = [
        _sqlite.insert_params(job, text, owner, _data.NOW)
        for job, text in zip(jobs, metadata, strict=True)
    ]
    leased = [_sqlite.leased(job, _sqlite.owner_of(primitive), _data.NOW) for job in jobs]
    ids = [job.id for job in jobs]
    shuffled = ids[:]
    random.Random(5).shuffle(shuffled)
    now_us = _data.NOW_US

    def calls(**by_name: Sequence[Call]) -> dict[str, Sequence[Call]]:
        names = {
            "sqlite": SQLITE,
            "memory": MEMORY,
            "primitive": PRIMITIVE,
            "floor": FLOOR,
            "story": STORY_FLOOR,
        }
        return {names[key]: value for key, value in by_name.items()}

    def bind(fn: Callable[..., object], *args: Any) -> Call:
        return lambda: fn(*args)

    # save
    insert = _sqlite.INSERT_JOB
    saves = interleave(
        calls(
            sqlite=[bind(store.save_job, job) for job in jobs],
            memory=[bind(memory.save_job, job) for job in jobs],
            primitive=[
                bind(primitive.storage.insert_job, job, text)
                for job, text in zip(leased, metadata, strict=True)
            ],
            floor=[bind(raw.execute, insert, params) for params in job_params],
            story=[bind(raw_story.execute, insert, params) for params in job_params],
        ),
        rounds,
    )
    add_rows(section, "save_job", saves)
    story_median = saves[STORY_FLOOR].median_us()
    for row in section.data:
        if row["operation"] == "save_job" and row["contender"] in (SQLITE, FLOOR):
            row["ratio_to_story_floor"] = row["median_us"] / story_median
            row["cpu_ratio_to_story_floor"] = (
                row["cpu_us"] / saves[STORY_FLOOR].cpu_us()
                if row["cpu_us"] is not None and saves[STORY_FLOOR].cpu_us()
                else None
            )

    # load
    select = _sqlite.SELECT_JOB

    def raw_load(job_id: str) -> object:
        return raw.execute(select, (job_id,)).fetchone()

    add_rows(
        section,
        "load_job",
        interleave(
            calls(
                sqlite=[bind(store.load_job, i) for i in shuffled],
                memory=[bind(memory.load_job, i) for i in shuffled],
                primitive=[bind(primitive.storage.get_job, i) for i in shuffled],
                floor=[bind(raw_load, i) for i in shuffled],
            ),
            rounds,
        ),
    )

    # status update: pending -> running (started_at stamped, and the lease taken)
    status_sql = _sqlite.status_sql(JobStatus.RUNNING)
    change = _sqlite.status_change(JobStatus.RUNNING, _data.NOW, _sqlite.owner_of(primitive))
    running = JobStatus.RUNNING
    add_rows(
        section,
        "update_job_status",
        interleave(
            calls(
                sqlite=[bind(store.update_job_status, i, running) for i in shuffled],
                memory=[bind(memory.update_job_status, i, running) for i in shuffled],
                primitive=[bind(primitive.storage.set_status, i, change) for i in shuffled],
                floor=[
                    bind(raw.execute, status_sql, _sqlite.status_params(running, now_us, i, owner))
                    for i in shuffled
                ],
            ),
            rounds,
        ),
    )

    # progress update with a phase
    progress_sql = _sqlite.SET_PROGRESS_PHASE
    add_rows(
        section,
        "update_job_progress",
        interleave(
            calls(
                sqlite=[bind(store.update_job_progress, i, 40, "indexing") for i in shuffled],
                memory=[bind(memory.update_job_progress, i, 40, "indexing") for i in shuffled],
                primitive=[
                    bind(primitive.storage.set_progress, i, 40, "indexing") for i in shuffled
                ],
                floor=[bind(raw.execute, progress_sql, (40, "indexing", i)) for i in shuffled],
            ),
            rounds,
        ),
    )

    # checkpoint save (a new phase checkpoint per job)
    data_json = _encode(CHECKPOINT_DATA)
    checkpoints = [
        Checkpoint(job_id=i, phase="indexing", data=CHECKPOINT_DATA, created_at=_data.NOW)
        for i in shuffled
    ]
    upsert = _sqlite.INSERT_CHECKPOINT
    add_rows(
        section,
        "save_checkpoint",
        interleave(
            calls(
                sqlite=[
                    bind(store.save_checkpoint, i, "indexing", CHECKPOINT_DATA) for i in shuffled
                ],
                memory=[
                    bind(memory.save_checkpoint, i, "indexing", CHECKPOINT_DATA) for i in shuffled
                ],
                primitive=[
                    bind(primitive.storage.upsert_checkpoint, c, data_json) for c in checkpoints
                ],
                floor=[
                    bind(raw.execute, upsert, (i, "indexing", data_json, now_us)) for i in shuffled
                ],
            ),
            rounds,
        ),
    )

    # checkpoint load
    select_checkpoint = _sqlite.SELECT_CHECKPOINT

    def raw_checkpoint(job_id: str) -> object:
        return raw.execute(select_checkpoint, (job_id, "indexing")).fetchone()

    again = ids[:]
    random.Random(6).shuffle(again)
    add_rows(
        section,
        "load_checkpoint",
        interleave(
            calls(
                sqlite=[bind(store.load_checkpoint, i, "indexing") for i in again],
                memory=[bind(memory.load_checkpoint, i, "indexing") for i in again],
                primitive=[
                    bind(primitive.storage.get_checkpoint_data, i, "indexing") for i in again
                ],
                floor=[bind(raw_checkpoint, i) for i in again],
            ),
            rounds,
        ),
    )
    _check_stored(store, raw, jobs[0])


def _check_stored(store: JobPersistence, raw: Any, job: SyncJob) -> None:
    """The calls really stored what they claim (a benchmark of a no-op proves nothing)."""
    loaded = store.load_job(job.id)
    if loaded is None or loaded.status is not JobStatus.RUNNING or loaded.progress != 40:
        raise RuntimeError(f"the sqlite backend did not store the updates of {job.id}: {loaded}")
    if store.load_checkpoint(job.id, "indexing") != CHECKPOINT_DATA:
        raise RuntimeError("the sqlite backend did not store the checkpoint")
    row = raw.execute(_sqlite.SELECT_JOB, (job.id,)).fetchone()
    if row is None or row[_data.STATUS] != "running" or row[_data.PROGRESS] != 40:
        raise RuntimeError(f"the floor did not store the updates of {job.id}: {row}")
