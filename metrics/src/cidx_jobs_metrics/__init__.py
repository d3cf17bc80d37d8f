"""Prometheus metrics for cidx-jobs.

Installed, this distribution registers :data:`plugin` (a :class:`JobMetrics` on
prometheus-client's default registry) through the ``cidx_jobs`` entry point, so every store
counts its events into it: jobs saved, status changes by status, checkpoints written and
skipped, jobs recovered, cleanups and what they deleted. :func:`instrument` wraps a store so
that the latency of every storage call, by operation, and each cleanup's duration are
measured too. Serve the metrics with prometheus-client, e.g. at a FastAPI server's
``/metrics`` with ``app.mount("/metrics", prometheus_client.make_asgi_app())``.
"""

from __future__ import annotations

from ._instrument import InstrumentedStorage, instrument
from ._metrics import JobMetrics
from ._plugin import plugin

__all__ = ["InstrumentedStorage", "JobMetrics", "instrument", "plugin"]
