"""Prometheus metrics shared by the engine and the API.

With several worker processes, `kami serve` sets `PROMETHEUS_MULTIPROC_DIR` before any
worker imports prometheus_client, and `/metrics` aggregates every worker's files.
"""

from __future__ import annotations

import bisect
import gc
import os
import time
from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
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
    scrape = CollectorRegistry()
    scrape.register(GC_PAUSES)
    if stock:
        scrape.register(_StockCollector(stock))
    return text + generate_latest(scrape)


GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class GcPauses(Collector):
    """The garbage collector's pauses in this process (the event loop stands still for
    each), by generation, exported as `kami_gc_pause_seconds`.

    Counted by `gc.callbacks` into plain lists, not a prometheus_client Histogram: a
    collection can start inside any allocation, also one made while a metric holds its
    (non-reentrant) lock, and observing a metric from the callback would then deadlock.
    With several workers the figures are those of the worker answering the scrape."""

    def __init__(self) -> None:
        self._started = 0.0
        # Per generation: counts per bucket (not cumulative; the last is +Inf), and sums.
        self._counts = [[0] * (len(GC_PAUSE_BUCKETS) + 1) for _ in range(3)]
        self._sums = [0.0] * 3

    def watch(self) -> None:
        """Start counting (once per process; a second call changes nothing)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        generation = info["generation"]
        self._counts[generation][bisect.bisect_left(GC_PAUSE_BUCKETS, elapsed)] += 1
        self._sums[generation] += elapsed

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "kami_gc_pause_seconds",
            "Garbage-collector pauses of the worker answering the scrape, by generation.",
            labels=["generation"],
        )
        for generation, counts in enumerate(self._counts):
            cumulative, buckets = 0, []
            for bound, count in zip((*GC_PAUSE_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            family.add_metric([str(generation)], buckets, self._sums[generation])
        yield family


GC_PAUSES = GcPauses()


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
