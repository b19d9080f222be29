"""Prometheus metrics shared by the engine and the API.

With several worker processes, `kami serve` sets `PROMETHEUS_MULTIPROC_DIR` before any
worker imports prometheus_client, and `/metrics` aggregates every worker's files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


# Per-SKU stock is exported for at most this many active products, so the label set stays
# bounded however large the catalog grows.
STOCK_SKU_LIMIT = 200


def render(stock: Mapping[str, tuple[int, int, int]] | None = None) -> bytes:
    """The text exposition of every metric, across workers when there are several, plus
    the pools' stock by SKU (read from Redis at scrape time, not kept per worker)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(DEFAULT_REGISTRY)
    if stock:
        scrape = CollectorRegistry()
        scrape.register(_StockCollector(stock))
        text += generate_latest(scrape)
    return text


class _StockCollector(Collector):
    def __init__(self, stock: Mapping[str, tuple[int, int, int]]) -> None:
        self._stock = stock

    def collect(self) -> Iterator[Metric]:
        families = [
            GaugeMetricFamily(
                f"kami_stock_{state}", f"Keys {state} in the pool, by SKU.", labels=["sku"]
            )
            for state in ("available", "held", "issued")
        ]
        for sku, counts in sorted(self._stock.items()):
            for family, value in zip(families, counts, strict=True):
                family.add_metric([sku], value)
        yield from families


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
