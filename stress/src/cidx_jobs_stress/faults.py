"""Faults: disk full, a read-only or removed file, damaged pages.

Every trial runs random writes (the crash scenario's mix) on an SQLite store while a fault
hits at a random point, and checks after every call:

* it returned, and its result matches the model; or it raised a typed error from
  :mod:`cidx_jobs.errors` (never a raw ``sqlite3`` or other exception) of the kind the fault
  calls for, and the store's contents are exactly what they were before the call (nothing
  half-written; a ``transaction()`` block is rolled back whole);
* afterwards the store recovers as docs/sqlite.md says: writes succeed again once space is
  freed or permissions restored; a removed file is replaced by a new empty database; a
  damaged file is moved aside at the next open and every job salvaged from it is exactly
  the one written.

Parts:

``disk full (max_size_mb)``
    the backend's ``max_size_mb`` option (``PRAGMA max_page_count``) set to 1 MiB.
``disk full (small file system)``
    a 2 MiB tmpfs (needs root and ``mount``), in a child process so that a crash (SIGBUS
    from a memory-mapped file on a full file system) is seen as a failure, not as the end
    of the run.
``read-only file``
    the database file made read-only while the store is open (``chmod 0444``; as root,
    whom file modes do not stop, ``chattr +i``, which stops root too).
``file removed``
    the database, ``-wal`` and ``-shm`` deleted while the store is open, also inside a
    ``transaction()`` block.
``damaged pages``
    whole pages overwritten with random bytes, at rest (then opened with
    ``recover_corrupt`` off, which must refuse and leave the file alone, then on) and
    under a running store.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cidx_jobs import JobPersistence
from cidx_jobs.errors import (
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
)

from ._common import Clock, Outcome, call, open_sqlite, remove_database
from ._config import StressConfig
from ._model import OpMaker, State, apply, diff, dump, execute, integrity
from ._report import ScenarioResult

__all__ = ["child_trial", "run"]

UTC = timezone.utc
START = datetime(2031, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9000, 1, 1, tzinfo=UTC)


class _Loop:
    """Random writes on one store, each checked against the model."""

    def __init__(
        self,
        result: ScenarioResult,
        store: JobPersistence,
        clock: Clock,
        seed: str,
        label: str,
        *,
        large: float = 0.03,
        deletes: bool = True,
    ) -> None:
        self.result = result
        self.store = store
        self.clock = clock
        self.rng = random.Random(seed)
        self.maker = OpMaker(self.rng, label.replace(" ", "-"), START, large=large, deletes=deletes)
        self.model = State()
        self.label = label

    def step(
        self, op: dict[str, Any] | None = None, allowed: tuple[type[Exception], ...] = ()
    ) -> Outcome:
        """Run one operation; a typed error of an ``allowed`` kind must leave no trace."""
        op = op if op is not None else self.maker.next()
        outcome = call(execute, self.store, op, self.clock.set)
        result = self.result
        if outcome.ok:
            want = apply(self.model, op)
            result.check(
                want == outcome.value,
                f"{self.label}: {op['op']} returned {outcome.value!r}, the model says {want!r}",
            )
        elif outcome.raw is not None:
            result.fail(
                f"{self.label}: {op['op']} let an untyped exception escape: {outcome.describe()}"
            )
        else:
            result.check(
                isinstance(outcome.error, allowed),
                f"{self.label}: {op['op']} raised an unexpected {outcome.describe()}",
            )
        return outcome

    def unchanged(self, what: str) -> None:
        """Check that the store holds exactly the model (after a failed call)."""
        read = call(dump, self.store)
        if not read.ok:
            self.result.fail(f"{self.label}: reading after {what} failed: {read.describe()}")
            return
        problems = diff(self.model, read.value)
        self.result.check(not problems, f"{self.label}: after {what}: {problems}")

    def free_space(self, ballast: Path | None = None) -> None:
        """Free space as an operator would: remove a ``ballast`` file on the full file system
        (deleting rows needs room in the WAL too), then delete every finished job."""
        if ballast is not None and ballast.exists():
            ballast.unlink()
            self.result.outcomes[f"{self.label}: space freed by removing a file"] += 1
        outcome = self.step(
            {"op": "delete", "older_than": FAR_FUTURE.isoformat()}, (StorageFullError,)
        )
        if outcome.error is not None:
            self.result.outcomes[f"{self.label}: cleanup refused for lack of space"] += 1
            self.unchanged("a refused cleanup")


def _reopen_and_compare(result: ScenarioResult, db: Path, model: State, label: str) -> None:
    problems = call(integrity, db)
    result.check(problems.ok and not problems.value, f"{label}: integrity: {problems.describe()}")
    opened = call(open_sqlite, db)
    if not result.check(opened.ok, f"{label}: reopening failed: {opened.describe()}"):
        return
    store = opened.value
    try:
        read = call(dump, store)
        result.check(
            read.ok and not diff(model, read.value),
            f"{label}: after reopening: {read.describe() if not read.ok else diff(model, read.value)}",
        )
    finally:
        store.close()


# -- disk full ------------------------------------------------------------------------------


def _disk_full_loop(
    result: ScenarioResult,
    store: JobPersistence,
    clock: Clock,
    seed: str,
    label: str,
    ops: int,
    ballast: Path | None = None,
) -> State:
    # Cleanups only when full, so that the store fills up.
    loop = _Loop(result, store, clock, seed, label, large=0.25, deletes=False)
    for _ in range(ops):
        outcome = loop.step(allowed=(StorageFullError, StorageError))
        if outcome.error is not None:
            result.faults += 1
            full = isinstance(outcome.error, StorageFullError)
            result.outcomes[
                f"{label}: {'StorageFullError' if full else type(outcome.error).__name__}"
            ] += 1
            loop.unchanged("a failed write")
            if loop.rng.random() < 0.5:
                loop.free_space(ballast)
    return loop.model


def _disk_full(config: StressConfig, folder: Path) -> ScenarioResult:
    result = ScenarioResult("disk full (max_size_mb)")
    for trial in range(config.scaled(3, 25)):
        db = folder / f"full-{trial}.db"
        clock = Clock(START)
        store = open_sqlite(db, clock, max_size_mb=1)
        try:
            model = _disk_full_loop(
                result,
                store,
                clock,
                f"{config.seed}-full-{trial}",
                result.name,
                config.scaled(200, 400),
            )
        finally:
            store.close()
        result.trials += 1
        _reopen_and_compare(result, db, model, f"{result.name} #{trial}")
        remove_database(db)
    return result


def _can_mount() -> str | None:
    """Why a tmpfs cannot be mounted here, or None."""
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount command"
    return None


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path | None]:
    mount_point = Path(tempfile.mkdtemp(prefix="tmpfs-", dir=folder))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        mount_point.rmdir()
        yield None
        return
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)
        mount_point.rmdir()


def _disk_full_fs(config: StressConfig, folder: Path) -> ScenarioResult:
    result = ScenarioResult("disk full (small file system)")
    reason = _can_mount()
    if reason is not None:
        result.skipped.append(f"{result.name}: {reason}")
        return result
    for trial in range(config.scaled(2, 10)):
        with _tmpfs(folder, "2m") as mount_point:
            if mount_point is None:
                result.skipped.append(f"{result.name}: mounting a tmpfs failed")
                return result
            db = mount_point / "jobs.db"
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cidx_jobs_stress.child",
                    "faults",
                    "fs-full",
                    str(db),
                    f"{config.seed}-fs-{trial}",
                    str(config.scaled(200, 400)),
                ],
                capture_output=True,
                check=False,
                timeout=600,
            )
            result.trials += 1
            if done.returncode != 0:
                signame = (
                    signal.Signals(-done.returncode).name
                    if done.returncode < 0
                    else done.returncode
                )
                result.fail(
                    f"{result.name}: the process died ({signame}): {done.stderr.decode(errors='replace')[-600:]}"
                )
                continue
            child = ScenarioResult.from_json(done.stdout.decode())
            result.merge(child)
    return result


# -- read-only and removed files --------------------------------------------------------------


def _make_read_only(paths: list[Path]) -> Callable[[], None] | None:
    """Make ``paths`` read-only for this process; the function that undoes it, or None."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in paths}
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)

        def restore_modes() -> None:
            for path, mode in modes.items():
                path.chmod(mode)

        return restore_modes
    # Root ignores file modes; the immutable attribute stops root too.
    if shutil.which("chattr") is None:
        return None
    names = [str(path) for path in paths]
    if subprocess.run(["chattr", "+i", *names], capture_output=True, check=False).returncode:
        return None

    def restore_attributes() -> None:
        subprocess.run(["chattr", "-i", *names], capture_output=True, check=True)

    return restore_attributes


#: What each read-only trial makes read-only, besides the database file.
_READ_ONLY_VARIANTS = ("the file", "the file and its -wal", "the file, its -wal and the folder")


def _read_only(config: StressConfig, folder: Path) -> ScenarioResult:
    result = ScenarioResult("read-only file")
    how = "chmod" if os.geteuid() != 0 else "chattr +i (root ignores file modes)"
    for trial in range(config.scaled(3, 21)):
        sub = folder / f"ro-{trial}"
        sub.mkdir()
        db = sub / "jobs.db"
        clock = Clock(START)
        store = open_sqlite(db, clock)
        loop = _Loop(result, store, clock, f"{config.seed}-ro-{trial}", result.name)
        variant = _READ_ONLY_VARIANTS[trial % len(_READ_ONLY_VARIANTS)]
        undo: Callable[[], None] | None = None
        try:
            for _ in range(loop.rng.randint(5, 60)):
                loop.step()
            targets = [db]
            if "-wal" in variant:
                targets.append(db.with_name("jobs.db-wal"))
            if "folder" in variant:
                targets.append(sub)
            undo = _make_read_only([t for t in targets if t.exists()])
            if undo is None:
                result.skipped.append(
                    f"{result.name}: neither chmod nor chattr can make a file read-only here"
                )
                store.close()
                return result
            result.faults += 1
            result.outcomes[f"{result.name}: {variant} made read-only with {how}"] += 1
            for _ in range(loop.rng.randint(5, 60)):
                outcome = loop.step(allowed=(StoragePermissionError, StorageUnavailableError))
                if outcome.error is not None:
                    result.outcomes[
                        f"{result.name}: {type(outcome.error).__name__} while open"
                    ] += 1
                    loop.unchanged("a write refused")
                else:
                    result.outcomes[f"{result.name}: call returned while read-only"] += 1
        finally:
            store.close()
        reopened = call(open_sqlite, db)
        if reopened.ok:
            reopened.value.close()
        result.check(
            isinstance(reopened.error, StoragePermissionError),
            f"{result.name}: opening with {variant} read-only gave {reopened.describe()}, "
            "docs/sqlite.md says StoragePermissionError",
        )
        if undo is not None:
            undo()
        result.trials += 1
        _reopen_and_compare(result, db, loop.model, f"{result.name} #{trial} ({variant})")
        shutil.rmtree(sub)
    return result


def _remove_inside_block(
    loop: _Loop, db: Path, first: dict[str, Any], second: dict[str, Any]
) -> None:
    """A transaction block during which the database file is removed."""
    with loop.store.transaction():
        execute(loop.store, first, loop.clock.set)
        remove_database(db)
        execute(loop.store, second, loop.clock.set)


def _removed(config: StressConfig, folder: Path) -> ScenarioResult:
    result = ScenarioResult("file removed")
    for trial in range(config.scaled(4, 30)):
        db = folder / f"gone-{trial}.db"
        clock = Clock(START)
        store = open_sqlite(db, clock)
        loop = _Loop(result, store, clock, f"{config.seed}-gone-{trial}", result.name)
        in_block = trial % 2 == 1
        try:
            for _ in range(loop.rng.randint(3, 40)):
                loop.step()
            result.faults += 1
            if in_block:
                outcome = call(
                    _remove_inside_block, loop, db, loop.maker.new_job(), loop.maker.progress()
                )
            else:
                remove_database(db)
                outcome = loop.step(loop.maker.new_job(), allowed=(StorageUnavailableError,))
            result.check(
                isinstance(outcome.error, StorageUnavailableError),
                f"{result.name}: the first write after the removal gave {outcome.describe()}, "
                "docs/sqlite.md says StorageUnavailableError",
            )
            result.outcomes[
                f"{result.name}: {'inside a block' if in_block else 'between calls'}"
            ] += 1
            # The store reopens the path: a new, empty database that keeps working.
            loop.model = State()
            loop.maker.ids.clear()
            loop.unchanged("the removal")
            for _ in range(loop.rng.randint(3, 30)):
                loop.step()
        finally:
            store.close()
        result.trials += 1
        _reopen_and_compare(result, db, loop.model, f"{result.name} #{trial}")
        remove_database(db)
    return result


# -- damaged pages ------------------------------------------------------------------------------


def _page_size(db: Path) -> int:
    with db.open("rb") as file:
        header = file.read(100)
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def _damage(db: Path, rng: random.Random, *, first_page: bool) -> list[int]:
    page_size = _page_size(db)
    pages = db.stat().st_size // page_size
    count = rng.randint(1, 3)
    chosen = sorted(rng.sample(range(2, pages + 1), min(count, pages - 1))) if pages > 1 else []
    if first_page:
        chosen = [1, *chosen[1:]]
    with db.open("r+b") as file:
        for page in chosen:
            file.seek((page - 1) * page_size)
            file.write(rng.randbytes(page_size))
    return chosen


def _check_salvage(
    result: ScenarioResult,
    db: Path,
    store: JobPersistence,
    model: State,
    damaged: bytes | None,
    label: str,
) -> None:
    report = getattr(store.storage, "recovery", None)
    result.outcomes[
        f"damaged pages: {'recovered at open' if report is not None else 'opened without recovery'}"
    ] += 1
    read = call(dump, store)
    if not result.check(read.ok, f"{label}: reading failed: {read.describe()}"):
        return
    actual: State = read.value
    if report is None:
        # SQLite found nothing wrong (e.g. only free pages were hit): nothing may differ.
        result.check(
            not diff(model, actual),
            f"{label}: damage went unnoticed but data changed: {diff(model, actual)}",
        )
        return
    result.check(
        report.moved_to.exists(), f"{label}: the damaged file was not kept at {report.moved_to}"
    )
    if damaged is not None:
        result.check(
            report.moved_to.read_bytes() == damaged, f"{label}: the damaged file was changed"
        )
    result.check(
        report.jobs_kept == len(actual.jobs),
        f"{label}: report says {report.jobs_kept} kept, store has {len(actual.jobs)}",
    )
    # Every salvaged job and checkpoint is exactly one that was written.
    kept = State(
        {job_id: model.jobs[job_id] for job_id in actual.jobs if job_id in model.jobs},
        {key: value for key, value in model.checkpoints.items() if key[0] in actual.jobs},
    )
    extra = actual.jobs.keys() - model.jobs.keys()
    result.check(not extra, f"{label}: salvage invented jobs {sorted(extra)[:5]}")
    wrong_checkpoints = {
        k for k in actual.checkpoints if actual.checkpoints[k] != kept.checkpoints.get(k)
    }
    jobs_wrong = diff(State(kept.jobs, {}), State(actual.jobs, {}))
    result.check(
        not jobs_wrong, f"{label}: salvaged jobs differ from what was written: {jobs_wrong}"
    )
    result.check(
        not wrong_checkpoints,
        f"{label}: salvaged checkpoints differ: {sorted(wrong_checkpoints)[:5]}",
    )
    result.check(
        set(report.jobs_lost) <= model.jobs.keys(),
        f"{label}: lost ids that never existed: {report.jobs_lost[:5]}",
    )
    result.outcomes["damaged pages: jobs salvaged"] += len(actual.jobs)
    result.outcomes["damaged pages: jobs lost"] += len(model.jobs) - len(actual.jobs)
    problems = integrity(db)
    result.check(not problems, f"{label}: the fresh file: {problems}")


def _corrupt(config: StressConfig, folder: Path) -> ScenarioResult:
    result = ScenarioResult("damaged pages")
    for trial in range(config.scaled(4, 40)):
        sub = folder / f"corrupt-{trial}"
        sub.mkdir()
        db = sub / "jobs.db"
        live = trial % 3 == 2
        label = f"{result.name} #{trial} ({'under a running store' if live else 'at rest'})"
        rng = random.Random(f"{config.seed}-corrupt-{trial}")
        clock = Clock(START)
        if live:
            store = open_sqlite(db, clock, check_on_open="off", recover_corrupt="false")
        else:
            store = open_sqlite(db, clock)
        loop = _Loop(result, store, clock, f"{config.seed}-corrupt-ops-{trial}", label, large=0.0)
        try:
            for _ in range(rng.randint(150, 400)):
                loop.step()
            if live:
                hit = _damage(db, rng, first_page=False)
                result.faults += len(hit)
                for _ in range(rng.randint(10, 40)):
                    outcome = loop.step(allowed=(StorageCorruptError, StorageError))
                    if outcome.error is not None:
                        result.outcomes[
                            f"damaged pages: {type(outcome.error).__name__} while running"
                        ] += 1
        finally:
            store.close()
        damaged: bytes | None = None
        if not live:
            hit = _damage(db, rng, first_page=rng.random() < 0.15)
            result.faults += len(hit)
            damaged = db.read_bytes()
            refused = call(open_sqlite, db, recover_corrupt="false")
            if refused.ok:
                refused.value.close()
                result.outcomes["damaged pages: not noticed with recover_corrupt off"] += 1
            else:
                result.check(
                    isinstance(refused.error, StorageCorruptError),
                    f"{label}: recover_corrupt=false gave {refused.describe()}",
                )
                result.check(
                    db.read_bytes() == damaged, f"{label}: recover_corrupt=false changed the file"
                )
        opened = call(open_sqlite, db)
        result.trials += 1
        if not opened.ok:
            result.check(
                opened.raw is None,
                f"{label}: opening let an untyped exception escape: {opened.describe()}",
            )
            result.outcomes[f"damaged pages: open refused with {type(opened.error).__name__}"] += 1
            continue
        store = opened.value
        try:
            _check_salvage(result, db, store, loop.model, damaged, label)
            # The store works on the (possibly fresh) file.
            after = call(execute, store, loop.maker.new_job(), loop.clock.set)
            result.check(after.ok, f"{label}: writing after recovery failed: {after.describe()}")
        finally:
            store.close()
        shutil.rmtree(sub)
    return result


# -- the child process part ------------------------------------------------------------------------


def child_trial(mode: str, db: Path, seed: str, ops: int) -> dict[str, Any]:
    """A fault trial run in a child process; its :class:`ScenarioResult` as a dict."""
    if mode != "fs-full":
        raise ValueError(f"unknown fault mode {mode!r}")
    result = ScenarioResult("disk full (small file system)")
    clock = Clock(START)
    opened = call(open_sqlite, db, clock)
    if not opened.ok:
        result.fail(f"opening on the small file system failed: {opened.describe()}")
        return result.to_json()
    store = opened.value
    # What an operator can delete to make room (SQLite needs room in the WAL to delete rows).
    ballast = db.with_name("ballast")
    ballast.write_bytes(b"\0" * 400_000)
    try:
        model = _disk_full_loop(result, store, clock, seed, result.name, ops, ballast)
        # Once an operator has made room (here: grown the file system), writes succeed
        # again, without reopening the store.
        subprocess.run(
            ["mount", "-o", "remount,size=16m", str(db.parent)], capture_output=True, check=True
        )
        loop = _Loop(result, store, clock, seed + "-after", result.name)
        loop.model = model
        loop.free_space()
        loop.step(loop.maker.new_job())
        model = loop.model
    finally:
        store.close()
    _reopen_and_compare(result, db, model, result.name)
    return result.to_json()


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Run every fault part; the combined result (each part's counts are in ``outcomes``)."""
    folder = workdir / "faults"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    total = ScenarioResult("faults")
    for part in (_disk_full, _disk_full_fs, _read_only, _removed, _corrupt):
        sub = part(config, folder)
        total.merge(sub)
        total.outcomes[f"{sub.name}: trials"] += sub.trials
        total.outcomes[f"{sub.name}: faults"] += sub.faults
    return total
