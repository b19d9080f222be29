"""The `redis_py` and `redis-benchmark` baselines: the pool's own take script, one request
per script call (no coalescing). Everything that depends on the pool's internals (script
text, KEYS/ARGV layout, key names) is in this module, so a change to core_rs/src/pool only
needs an edit here. Mirrors `run_ops` in core_rs/src/pool/client.rs."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

LUA = Path(__file__).resolve().parent.parent / "core_rs" / "src" / "pool" / "lua"
ISSUED_TTL_MS = 86_400_000  # PoolConfig::issued_ttl_ms default
SWEEP_PER_CALL = 32  # client.rs SWEEP_PER_CALL


def ops_script() -> str:
    """lib.lua prelude + ops.lua body, as scripts.rs concatenates them."""
    return (LUA / "lib.lua").read_text() + (LUA / "ops.lua").read_text()


def script_sha() -> str:
    return hashlib.sha1(ops_script().encode()).hexdigest()


def shard_tag(namespace: str, sku: str, shard: int = 0) -> str:
    return f"{{{namespace}:pool:{sku}:{shard}}}"


def take_args(holder: str, quantity: int = 1) -> list[str | int]:
    """ARGV of a batch of one take: now ('' = Redis TIME), keep, sweep, then
    kind, holder, quantity, ttl, batch."""
    return ["", ISSUED_TTL_MS, SWEEP_PER_CALL, "T", holder, quantity, 0, ""]


def redis_py_client(url: str, connections: int) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, max_connections=max(connections, 1))


async def redis_py_take(
    client: aioredis.Redis, sha: str, tag: str, holder: str, quantity: int = 1
) -> list[Any]:
    """One take; the reply of a one-request batch, `[status, count, value...]`
    (status 0: the entries follow; see the header of core_rs/src/pool/lua/ops.lua)."""
    reply: list[Any] = await client.evalsha(sha, 1, tag, *take_args(holder, quantity))
    return reply


async def load_script(client: aioredis.Redis) -> str:
    sha: str = await client.script_load(ops_script())
    if sha != script_sha():
        raise RuntimeError("SCRIPT LOAD returned an unexpected SHA")
    return sha


@dataclass
class EvalshaResult:
    concurrency: int
    requests: int
    per_s: float
    p50_ms: float | None
    command: list[str]


def redis_benchmark_binary() -> str | None:
    return shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")


def redis_benchmark_evalsha(
    binary: str, redis_url: str, sha: str, tag: str, *, requests: int, concurrency: int
) -> EvalshaResult:
    """One EVALSHA take per request; holders `__rand_int__` from a keyspace far larger than
    the request count, so (almost) every call takes a fresh entry."""
    if redis_url.startswith(("unix://", "redis+unix://")):
        where = ["-s", redis_url.split("://", 1)[1].split("?", 1)[0]]
    else:
        hostport = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        host, _, port = hostport.partition(":")
        where = ["-h", host or "127.0.0.1", "-p", port or "6379"]
    command = [
        binary,
        *where,
        "-n",
        str(requests),
        "-c",
        str(concurrency),
        "-r",
        "1000000000",
        "--csv",
        "EVALSHA",
        sha,
        "1",
        tag,
        "",
        str(ISSUED_TTL_MS),
        str(SWEEP_PER_CALL),
        "T",
        "b:__rand_int__",
        "1",
        "0",
        "",
    ]
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
    elapsed = time.perf_counter() - started
    # --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
    rows = [r for r in out.splitlines() if r.startswith('"') and not r.startswith('"test"')]
    per_s, p50 = requests / elapsed, None
    if rows:
        fields = [f.strip('"') for f in rows[-1].split('","')]
        numbers = [float(f) for f in fields[1:] if re.fullmatch(r"[0-9.]+", f)]
        if numbers:
            per_s = numbers[0]
        if len(numbers) > 3:
            p50 = numbers[3]
    return EvalshaResult(concurrency, requests, per_s, p50, command)


async def take_until(
    take: Any, concurrency: int, total: int, prefix: str
) -> tuple[int, float, list[float]]:
    """`concurrency` callers share `total` takes; returns (ok, seconds, latencies ms)."""
    counter = iter(range(total))
    latencies: list[float] = []

    async def caller() -> int:
        ok = 0
        for n in counter:
            t0 = time.perf_counter()
            await take(f"{prefix}:{n}")
            latencies.append((time.perf_counter() - t0) * 1000)
            ok += 1
        return ok

    started = time.perf_counter()
    done = await asyncio.gather(*(caller() for _ in range(concurrency)))
    return sum(done), time.perf_counter() - started, latencies
