"""JobMetrics: the plugin that turns the cidx-jobs events into Prometheus metrics."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from cidx_jobs import CleanupReport, JobStatus, RecoveryReport, hookimpl

#: The buckets of the storage-call histogram, in seconds: an SQLite call takes tens of
#: microseconds, a server's hundreds, a cleanup batch tens of milliseconds.
CALL_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
#: The buckets of the cleanup-duration histogram, in seconds.
CLEANUP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class _CleanupClock(threading.local):
    #: Storage time spent by the cleanup under way on this thread (see InstrumentedStorage).
    seconds: float | None = None
    #: Jobs and checkpoints an instrumented storage already counted, batch by batch, for the
    #: cleanup under way on this thread (``cidx_jobs_cleanup_done`` counts only the rest).
    jobs: int = 0
    checkpoints: int = 0

    def reset(self) -> None:
        self.seconds = None
        self.jobs = self.checkpoints = 0


class JobMetrics:
    """A cidx-jobs plugin whose event hooks count into Prometheus metrics.

    Installed, ``cidx-jobs-metrics`` registers one instance, on prometheus-client's default
    registry, through the ``cidx_jobs`` entry point (as ``prometheus``), so every store of the
    process counts into it. Build another one on your own registry (a test's, say) and
    register it with ``store.hooks.pm.register(...)``.

    The metrics (with the default ``namespace``):

    * ``cidx_jobs_jobs_saved_total``: jobs saved.
    * ``cidx_jobs_status_changes_total{status}``: status changes, by new status.
    * ``cidx_jobs_checkpoints_written_total``, ``cidx_jobs_checkpoints_skipped_total``:
      checkpoints written, and skipped by the checkpoint policy.
    * ``cidx_jobs_recovery_runs_total`` and ``cidx_jobs_jobs_recovered_total{outcome}``:
      recovery sweeps, and the jobs they took (``interrupted`` or ``requeued``).
    * ``cidx_jobs_cleanup_runs_total``, ``cidx_jobs_cleanup_deleted_jobs_total``,
      ``cidx_jobs_cleanup_deleted_checkpoints_total``: cleanups (dry runs not counted)
      and what they deleted.
    * ``cidx_jobs_cleanup_duration_seconds``: how long each cleanup spent in the storage.
    * ``cidx_jobs_storage_call_duration_seconds{operation}`` and
      ``cidx_jobs_storage_errors_total{operation,error}``: every storage call's latency and
      failures by storage method.

    The last three need a store wrapped by :func:`~cidx_jobs_metrics.instrument`: events do
    not carry time.

    :param registry: where the metrics are registered (``None``: nowhere, for tests).
    :param namespace: the prefix of every metric's name.
    :raises ValueError: (prometheus-client) the registry has these metrics already.
    """

    def __init__(
        self, registry: CollectorRegistry | None = REGISTRY, *, namespace: str = "cidx_jobs"
    ) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=namespace, registry=registry)

        self.jobs_saved = counter("jobs_saved", "Jobs saved (save_job).")
        self.status_changes = counter(
            "status_changes", "Job status changes, by the new status.", ("status",)
        )
        self.checkpoints_written = counter("checkpoints_written", "Checkpoints written.")
        self.checkpoints_skipped = counter(
            "checkpoints_skipped", "Checkpoints the checkpoint policy skipped (throttling)."
        )
        self.recovery_runs = counter("recovery_runs", "Recovery sweeps (recover_interrupted_jobs).")
        self.jobs_recovered = counter(
            "jobs_recovered",
            "Jobs taken over from owners whose lease expired, by outcome.",
            ("outcome",),
        )
        self.cleanup_runs = counter("cleanup_runs", "Cleanups run (dry runs not counted).")
        self.cleanup_deleted_jobs = counter("cleanup_deleted_jobs", "Jobs deleted by cleanups.")
        self.cleanup_deleted_checkpoints = counter(
            "cleanup_deleted_checkpoints", "Checkpoints deleted by cleanups."
        )
        self.cleanup_duration = Histogram(
            "cleanup_duration_seconds",
            "Storage time of each cleanup (instrumented stores only).",
            namespace=namespace,
            registry=registry,
            buckets=CLEANUP_BUCKETS,
        )
        self.storage_calls = Histogram(
            "storage_call_duration_seconds",
            "Latency of storage calls, by storage method (instrumented stores only).",
            ("operation",),
            namespace=namespace,
            registry=registry,
            buckets=CALL_BUCKETS,
        )
        self.storage_errors = counter(
            "storage_errors",
            "Storage calls that failed, by storage method and error (instrumented stores only).",
            ("operation", "error"),
        )
        # Children resolved once: an event then costs one dict lookup and one inc().
        self._by_status = {status: self.status_changes.labels(status.value) for status in JobStatus}
        self._interrupted = self.jobs_recovered.labels("interrupted")
        self._requeued = self.jobs_recovered.labels("requeued")
        self._saved = self.jobs_saved.inc
        self._written = self.checkpoints_written.inc
        self._skipped = self.checkpoints_skipped.inc
        self.cleanup_clock = _CleanupClock()

    @hookimpl
    def cidx_jobs_job_saved(self) -> None:
        self._saved()

    @hookimpl
    def cidx_jobs_status_changed(self, status: JobStatus) -> None:
        self._by_status[status].inc()

    @hookimpl
    def cidx_jobs_checkpoint_saved(self) -> None:
        self._written()

    @hookimpl
    def cidx_jobs_checkpoint_skipped(self) -> None:
        self._skipped()

    @hookimpl
    def cidx_jobs_recovery_done(self, report: RecoveryReport) -> None:
        self.recovery_runs.inc()
        if report.interrupted:
            self._interrupted.inc(len(report.interrupted))
        if report.requeue:
            self._requeued.inc(len(report.requeue))

    @hookimpl
    def cidx_jobs_cleanup_done(self, report: CleanupReport) -> None:
        clock = self.cleanup_clock
        seconds, jobs, checkpoints = clock.seconds, clock.jobs, clock.checkpoints
        clock.reset()
        if report.dry_run:
            return
        self.cleanup_runs.inc()
        self.cleanup_deleted_jobs.inc(max(0, report.jobs_deleted - jobs))
        self.cleanup_deleted_checkpoints.inc(max(0, report.checkpoints_deleted - checkpoints))
        if seconds is not None:
            self.cleanup_duration.observe(seconds)
