"""`python -m bench --quick` end to end: it starts its own stores and server, runs every
scenario and baseline, and writes a report with every headline field of issue 5 filled,
the raw figures behind each ratio, and the chart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import baseline_redis

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(420)
def test_the_quick_bench_fills_every_field_of_its_report(tmp_path: Path) -> None:
    if os.environ.get("KAMI_TEST_DATABASE_URL"):
        pytest.skip("the bench starts its own embedded stores: once per CI run is enough")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAMI_", "PROMETHEUS_"))}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / f"{report['timestamp']}.json").read_text() == (
        tmp_path / "latest.json"
    ).read_text()
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert report["commit"]["sha"]
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu_model"]
    ratios = dict(report["ratios"])
    if baseline_redis.redis_benchmark_binary() is None:
        assert ratios.pop("pool_vs_evalsha") is None
    assert all(isinstance(v, float) and v > 0 for v in ratios.values()), ratios
    assert set(report["ratio_inputs"]) == set(report["ratios"])
    http = report["http"]
    assert http["peak_rps"] > 0 and http["p50_ms"] > 0 and http["p99_ms_at_80pct"] > 0
    assert http["kami_at_80pct"]["server"]["flushes"] > 0
    assert "gc_full_collections" in http["kami_at_80pct"]["server"]
    assert report["decrypt_per_s_core"] > 0
    assert report["import_1m_s"] > 0
    # The sale's check in PostgreSQL after the HTTP runs.
    assert report["duplicates"] == 0
    assert report["oversells"] == 0
    assert report["sale_check"]["issued_equals_201"] == 1
    assert {"met", "value", "target"} <= set(report["goals"]["http_vs_noop"])
