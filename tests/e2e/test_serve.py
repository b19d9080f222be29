"""`kami serve` as a real process: the embedded default, bad settings, several workers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import psutil
import pytest

from engine.settings import Settings
from tests.support.server import kami_serve, run_kami

pytestmark = pytest.mark.slow


def _leftover_servers(data_dir: Path) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(data_dir.resolve()) in " ".join(p.info["cmdline"] or [])
    ]


def test_embedded_default_starts_restarts_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    with kami_serve("--data-dir", str(data_dir), "--no-demo", env={}) as kami:
        assert httpx.get(f"{kami.base_url}/livez").json() == {"status": "ok"}
        assert httpx.get(f"{kami.base_url}/readyz").json()["checks"] == {
            "postgres": "ok",
            "redis": "ok",
        }
        assert kami.stop() == 0
    first = kami.output
    token_lines = [line for line in first.splitlines() if "Admin token" in line]
    assert len(token_lines) == 1
    admin_token = token_lines[0].split()[-1]
    assert admin_token.startswith("kami_admin_")
    # The banner shows the token once; no log line carries it.
    assert first.count(admin_token) == 1
    assert (data_dir / "master.key").stat().st_mode & 0o777 == 0o600
    assert _leftover_servers(data_dir) == []

    with kami_serve("--data-dir", str(data_dir), "--no-demo", env={}) as kami:
        assert kami.stop() == 0
    assert admin_token not in kami.output
    assert "Migrations" not in kami.output  # nothing left to apply: the data was kept
    assert _leftover_servers(data_dir) == []


def test_logs_are_json_with_request_ids(tmp_path: Path) -> None:
    with kami_serve("--data-dir", str(tmp_path / "var"), "--no-demo", env={}) as kami:
        httpx.get(f"{kami.base_url}/livez", headers={"X-Request-Id": "e2e-trace-1"})
        kami.stop()
    records = [json.loads(line) for line in kami.lines if line.startswith("{")]
    request_logs = [r for r in records if r.get("event") == "request"]
    assert any(
        r.get("request_id") == "e2e-trace-1" and r["route"] == "/livez" for r in request_logs
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAMI_DATABASE_URL": "mysql://x/y"}, "invalid setting KAMI_DATABASE_URL"),
        ({"KAMI_REDIS_URL": "http://x"}, "invalid setting KAMI_REDIS_URL"),
        ({"KAMI_MASTER_KEY": "c2hvcnQ="}, "invalid setting KAMI_MASTER_KEY"),
        ({"KAMI_PORT": "not-a-port"}, "invalid setting KAMI_PORT"),
        (
            {
                "KAMI_DATABASE_URL": "postgresql://kami@127.0.0.1:1/kami",
                "KAMI_REDIS_URL": "redis://127.0.0.1:1",
                "KAMI_MASTER_KEY": "a2FtaS1rYW1pLWthbWkta2FtaS1rYW1pLWthbWkta2E=",
            },
            "cannot connect to PostgreSQL",
        ),
    ],
)
def test_bad_settings_exit_with_one_clear_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = run_kami("serve", "--data-dir", str(tmp_path / "var"), env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kami: ")
    assert message in lines[0]


def test_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    with kami_serve("--data-dir", str(data_dir), "--no-demo", env={}) as kami:
        second = run_kami("serve", "--data-dir", str(data_dir), "--port", "1", env={})
        assert second.returncode != 0
        assert second.stderr.strip().splitlines() == [
            f"kami: data dir {data_dir.resolve()} is in use by another Kami process "
            f"(pid {kami.process.pid})"
        ]
        # The running server is unharmed.
        assert httpx.get(f"{kami.base_url}/readyz").status_code == 200


def test_several_workers_share_one_port_and_one_metrics_view(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.database_url and settings.redis_url and settings.master_key
    env = {
        "KAMI_DATABASE_URL": settings.database_url.get_secret_value(),
        "KAMI_REDIS_URL": settings.redis_url.get_secret_value(),
        "KAMI_MASTER_KEY": settings.master_key.get_secret_value(),
        "KAMI_DATA_DIR": str(tmp_path / "var"),
    }
    with kami_serve("--workers", "2", "--no-demo", env=env) as kami:
        kami.wait_workers(2)
        with httpx.Client(base_url=kami.base_url) as client:
            for _ in range(40):
                assert client.get("/livez").status_code == 200
        # Fresh connections land on either worker; the sum is what both served.
        text = httpx.get(f"{kami.base_url}/metrics").text
        kami.stop()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith('kami_http_requests_total{method="GET",route="/livez",status="200"}')
    )
    assert float(line.split()[-1]) >= 40
    pids = {
        json.loads(ln).get("pid")
        for ln in kami.lines
        if ln.startswith("{") and '"event": "worker_started"' in ln
    }
    assert len(pids) == 2
