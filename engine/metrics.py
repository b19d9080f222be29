"""Prometheus metrics shared by the engine and the API.

With several worker processes, `kami serve` sets `PROMETHEUS_MULTIPROC_DIR` before any
worker imports prometheus_client, and `/metrics` aggregates every worker's files.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

HTTP_REQUESTS = Counter(
    "kami_http_requests_total",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "kami_http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def render() -> bytes:
    """The text exposition of every metric, across workers when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)


ISSUANCES = Counter("kami_issuance_total", "Issuance requests by result code.", ["result"])
ISSUANCE_LATENCY = Histogram(
    "kami_issuance_duration_seconds",
    "Issuance latency inside the engine (take, commit, decrypt).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
FLUSH_SIZE = Histogram(
    "kami_batcher_flush_size",
    "Issuances recorded per group-commit transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
FLUSH_LATENCY = Histogram(
    "kami_batcher_flush_duration_seconds",
    "Duration of one group-commit transaction.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
INTEGRITY_ALARMS = Counter(
    "kami_integrity_alarms_total",
    "Issuances refused because a key was not available at commit (never expected).",
)
