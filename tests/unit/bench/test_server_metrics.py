"""The bench's reading of a server's own histograms: quantiles from bucket counts, over the
window between two scrapes, from the text exposition prometheus_client really writes."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench import server_metrics

BOUNDS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)


class Server:
    """The histograms the bench reads, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http = Histogram(
            "kami_http_request_duration_seconds",
            "",
            ["method", "route"],
            buckets=BOUNDS,
            registry=self.registry,
        )
        self.issuance = Histogram(
            "kami_issuance_duration_seconds", "", buckets=BOUNDS, registry=self.registry
        )
        self.flush = Histogram(
            "kami_batcher_flush_duration_seconds", "", buckets=BOUNDS, registry=self.registry
        )
        self.flush_size = Histogram(
            "kami_batcher_flush_size", "", buckets=(1, 4, 16, 64, 256), registry=self.registry
        )
        self.gc = Histogram(
            "kami_gc_pause_seconds", "", ["generation"], buckets=BOUNDS, registry=self.registry
        )

    def scrape(self) -> dict[str, server_metrics.Buckets]:
        return server_metrics.parse(generate_latest(self.registry).decode())


def test_quantiles_come_from_the_window_between_scrapes_only() -> None:
    server = Server()
    issue = server.http.labels("POST", "/v1/issuances")
    for _ in range(1000):  # before the window: slow answers that must not count
        issue.observe(0.4)
    before = server.scrape()
    for _ in range(50):
        issue.observe(0.003)
    for _ in range(49):
        issue.observe(0.02)
    issue.observe(0.3)
    server.http.labels("GET", "/livez").observe(0.4)  # another route: not counted
    for size in (3, 3, 10, 10):
        server.flush_size.observe(size)
        server.flush.observe(0.007)
    server.gc.labels("2").observe(0.004)
    server.gc.labels("2").observe(0.004)
    server.gc.labels("0").observe(0.3)  # a young collection: not a full one
    figures = server_metrics.window(before, server.scrape())

    # 50 of 100 at or below 5 ms, 99 at or below 25 ms: the bucket bounds exactly.
    assert figures["http_p50_ms"] == pytest.approx(5.0)
    assert figures["http_p99_ms"] == pytest.approx(25.0)
    assert figures["flushes"] == 4
    assert figures["flush_mean_size"] == 6.5
    # All four flushes in (5, 10] ms: the median is interpolated halfway.
    assert figures["flush_p50_ms"] == pytest.approx(7.5)
    assert figures["issuance_p50_ms"] is None  # nothing observed
    assert figures["gc_full_collections"] == 2
    assert figures["gc_full_p99_ms"] <= 5.0


def test_a_quantile_is_interpolated_within_its_bucket() -> None:
    buckets = {0.01: 0.0, 0.02: 10.0, math.inf: 10.0}
    assert server_metrics.quantile(buckets, 0.5) == pytest.approx(0.015)
    assert server_metrics.quantile(buckets, 0.1) == pytest.approx(0.011)


def test_a_quantile_beyond_the_last_bound_is_that_bound() -> None:
    buckets = {0.01: 5.0, 0.02: 5.0, math.inf: 10.0}
    assert server_metrics.quantile(buckets, 0.99) == 0.02


def test_without_observations_or_scrapes_there_are_no_figures() -> None:
    assert server_metrics.quantile({}, 0.5) is None
    assert server_metrics.quantile({0.01: 0.0, math.inf: 0.0}, 0.5) is None
    assert server_metrics.window(None, Server().scrape()) == {}
    empty = server_metrics.window(Server().scrape(), Server().scrape())
    assert empty["flushes"] == 0
    assert empty["flush_mean_size"] is None
    assert empty["http_p99_ms"] is None


def test_a_server_without_metrics_gives_none() -> None:
    # Nothing listens on port 9 of loopback (discard): the scrape is refused at once.
    assert server_metrics.scrape("http://127.0.0.1:9") is None
