"""The metrics mounted at a FastAPI server's /metrics, served by uvicorn on a free localhost
port and scraped over HTTP, as Prometheus does."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

import prometheus_client  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from cidx_jobs import JobStatus, SyncJob, open_persistence  # noqa: E402
from cidx_jobs_metrics import instrument  # noqa: E402


def build_app(url: str, registry: prometheus_client.CollectorRegistry) -> FastAPI:
    from cidx_jobs import Hooks, get_plugin_manager
    from cidx_jobs_metrics import JobMetrics

    metrics = JobMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        store = instrument(
            open_persistence(url, hooks=Hooks(get_plugin_manager(blocked=("prometheus",)))), metrics
        )
        app.state.jobs = store
        try:
            yield
        finally:
            store.close()

    app = FastAPI(lifespan=lifespan)
    app.mount("/metrics", prometheus_client.make_asgi_app(registry=registry))

    @app.post("/jobs/{job_id}")
    def start(job_id: str) -> dict[str, str]:
        store = app.state.jobs
        store.save_job(SyncJob.create(id=job_id, user_id="alice", project_id="web"))
        store.update_job_status(job_id, JobStatus.RUNNING)
        return {"id": job_id}

    return app


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 at a free port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def request(url: str, method: str = "GET") -> tuple[int, str, str]:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as reply:
        return reply.status, reply.headers["Content-Type"], reply.read().decode()


def test_scrape(tmp_path: Path) -> None:
    registry = prometheus_client.CollectorRegistry()
    app = build_app(f"sqlite:///{tmp_path / 'jobs.db'}", registry)
    with serving(app) as base:
        for job_id in ("a", "b"):
            assert request(f"{base}/jobs/{job_id}", "POST")[0] == 200
        status, content_type, text = request(f"{base}/metrics/")
    assert status == 200
    assert content_type.startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    saved = families["cidx_jobs_jobs_saved"].samples
    assert [s.value for s in saved if s.name == "cidx_jobs_jobs_saved_total"] == [2.0]
    running = [
        s.value
        for s in families["cidx_jobs_status_changes"].samples
        if s.name.endswith("_total") and s.labels["status"] == "running"
    ]
    assert running == [2.0]
    latency = families["cidx_jobs_storage_call_duration_seconds"].samples
    inserts = [
        s.value
        for s in latency
        if s.name.endswith("_count") and s.labels.get("operation") == "insert_job"
    ]
    assert inserts == [2.0]
