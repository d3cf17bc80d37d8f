"""The instance the ``cidx_jobs`` entry point registers, on prometheus-client's default
registry (created once per process, when a plugin manager first loads it)."""

from __future__ import annotations

from ._metrics import JobMetrics

#: The metrics every store of the process counts into.
plugin = JobMetrics()
