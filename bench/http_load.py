"""Drive Locust headless (FastHttpUser, worker processes) as a subprocess and read its CSVs."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


@dataclass
class LoadResult:
    label: str
    users: int
    seconds: int
    user_rps: float | None
    requests: int
    failures: int
    rps: float  # all answers per second over the run
    ok_rps: float  # successful answers per second over the run
    peak_rps: float  # highest per-second rate Locust saw (successes only)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    # A ramp (`ramp_locust`): each step's users and the successes per second they got.
    steps: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_locust(
    label: str,
    host: str,
    out_dir: Path,
    *,
    users: int,
    seconds: int,
    mode: str = "issue",
    api_key: str = "",
    sku: str = "",
    user_rps: float | None = None,
    processes: int = 2,
) -> LoadResult:
    prefix = out_dir / label
    env = dict(os.environ)
    env.update(
        KAMI_BENCH_MODE=mode,
        KAMI_BENCH_API_KEY=api_key,
        KAMI_BENCH_SKU=sku,
        KAMI_BENCH_USER_RPS=str(user_rps or 0),
    )
    spawn_rate = max(users / 2, 1)  # users ramp up over ~2 s
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        f"{seconds}s",
        "--processes",
        str(processes),
        "--csv",
        str(prefix),
        "--csv-full-history",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--stop-timeout",
        "5",
    ]
    with (out_dir / f"{label}.log").open("w") as log:
        subprocess.run(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            timeout=seconds + 120,
            check=False,
        )
    stats = {r["Name"]: r for r in _rows(Path(f"{prefix}_stats.csv"))}
    agg = stats["Aggregated"]
    requests, failures = int(agg["Request Count"]), int(agg["Failure Count"])
    peak = 0.0
    history = _rows(Path(f"{prefix}_stats_history.csv"))
    rows = [h for h in history if h["Name"] == "Aggregated"]
    # Skip the ramp; Locust's "current" rate is a moving window over the last seconds.
    for h in rows[len(rows) // 4 :]:
        peak = max(peak, _num(h["Requests/s"]) - _num(h["Failures/s"]))
    errors: dict[str, int] = {}
    for r in _rows(Path(f"{prefix}_failures.csv")):
        name = r["Error"].replace("CatchResponseError(", "").strip("()'\"")
        errors[name] = errors.get(name, 0) + int(r["Occurrences"])
    rps = _num(agg["Requests/s"])
    ok_rps = rps * (requests - failures) / requests if requests else 0.0
    return LoadResult(
        label=label,
        users=users,
        seconds=seconds,
        user_rps=user_rps,
        requests=requests,
        failures=failures,
        rps=rps,
        ok_rps=ok_rps,
        peak_rps=max(peak, ok_rps),
        p50_ms=_num(agg["50%"]),
        p95_ms=_num(agg["95%"]),
        p99_ms=_num(agg["99%"]),
        errors=errors,
    )


def ramp_locust(
    label: str, host: str, out_dir: Path, *, steps: tuple[int, ...], seconds: int, **kwargs: Any
) -> LoadResult:
    """Saturation as a ramp: one run per user count, until throughput stops growing. Each
    step is a whole Locust run (its own CSVs, its answers in flight finished and counted);
    the result is the best step's, with every step's rate and the totals of all."""
    results = [
        run_locust(f"{label}_u{users}", host, out_dir, users=users, seconds=seconds, **kwargs)
        for users in steps
    ]
    best = max(results, key=lambda r: r.ok_rps)
    errors: dict[str, int] = {}
    for r in results:
        for code, count in r.errors.items():
            errors[code] = errors.get(code, 0) + count
    return LoadResult(
        label=label,
        users=best.users,
        seconds=seconds * len(results),
        user_rps=None,
        requests=sum(r.requests for r in results),
        failures=sum(r.failures for r in results),
        rps=best.rps,
        ok_rps=best.ok_rps,
        peak_rps=best.ok_rps,
        p50_ms=best.p50_ms,
        p95_ms=best.p95_ms,
        p99_ms=best.p99_ms,
        errors=errors,
        steps=[
            {"users": r.users, "ok_rps": round(r.ok_rps, 1), "p99_ms": r.p99_ms} for r in results
        ],
    )


def paced_users(target_rps: float, minimum: int) -> tuple[int, float]:
    """Users and per-user rate for a paced run at `target_rps`. Each user paces itself to at
    most 8 requests/s, so it stays on schedule up to ~120 ms of latency: a user waiting on
    a slow answer would otherwise lower the offered load (coordinated omission)."""
    users = max(minimum, math.ceil(target_rps / 8))
    return users, target_rps / users
