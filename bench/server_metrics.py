"""What the server itself measured during a load run, from two scrapes of its `/metrics`.

Locust's latencies include the load generator's own scheduling delays, which on a machine
shared with the server are not small. The server's histograms (request time inside the
app, the engine's issuance time, group-commit flushes, the garbage collector's full
collections) split a client-side tail into the
part the server spent and the part it did not. Quantiles are read from the bucket counts
of the scrape-to-scrape difference, interpolated linearly within a bucket, so they are as
coarse as the buckets (`engine/metrics.py`).
"""

from __future__ import annotations

import math
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

# (histogram, label filter) per figure of the report.
HISTOGRAMS: dict[str, tuple[str, dict[str, str]]] = {
    "http": ("kami_http_request_duration_seconds", {"route": "/v1/issuances", "method": "POST"}),
    "issuance": ("kami_issuance_duration_seconds", {}),
    "flush": ("kami_batcher_flush_duration_seconds", {}),
    "flush_size": ("kami_batcher_flush_size", {}),
    "gc_full": ("kami_gc_pause_seconds", {"generation": "2"}),
}

Buckets = dict[float, float]  # upper bound -> cumulative count; SUM -> sum of observations
SUM = -1.0


def scrape(base_url: str) -> dict[str, Buckets] | None:
    """The histograms of a server's `/metrics`; None if it has none to give (another
    deployment's may be closed to the load generator)."""
    try:
        return parse(httpx.get(f"{base_url}/metrics", timeout=10).raise_for_status().text)
    except httpx.HTTPError:
        return None


def parse(text: str) -> dict[str, Buckets]:
    """Cumulative bucket counts (and sums) of each histogram above, summed over label sets
    that match its filter (over workers, too)."""
    wanted = {name: (figure, labels) for figure, (name, labels) in HISTOGRAMS.items()}
    found: dict[str, Buckets] = {figure: {} for figure in HISTOGRAMS}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        figure, labels = wanted[family.name]
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
            elif sample.name.endswith("_sum"):
                bound = SUM
            else:
                continue
            found[figure][bound] = found[figure].get(bound, 0.0) + sample.value
    return found


def quantile(buckets: Buckets, q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket; None if
    it is empty, the last finite bound if the quantile falls in the +Inf bucket."""
    bounds = sorted(b for b in buckets if b != SUM)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def window(before: dict[str, Buckets] | None, after: dict[str, Buckets] | None) -> dict[str, Any]:
    """The server's figures between two scrapes: request, issuance, flush and full-collection
    p50/p99 (ms); the number of flushes and their mean size (issuances per flush), and the
    number of full collections."""
    if before is None or after is None:
        return {}
    delta = {
        figure: {b: after[figure][b] - before[figure].get(b, 0.0) for b in after[figure]}
        for figure in after
    }
    result: dict[str, Any] = {}
    for figure in ("http", "issuance", "flush", "gc_full"):
        for q in (0.5, 0.99):
            value = quantile(delta[figure], q)
            result[f"{figure}_p{round(q * 100)}_ms"] = (
                None if value is None else round(value * 1000, 2)
            )
    sizes = delta["flush_size"]
    flushes = sizes.get(math.inf, 0.0)
    result["flushes"] = int(flushes)
    result["flush_mean_size"] = round(sizes.get(SUM, 0.0) / flushes, 1) if flushes else None
    result["gc_full_collections"] = int(delta["gc_full"].get(math.inf, 0.0))
    return result
