"""Benchmark: `take` on one hot SKU with 256 concurrent callers.

Compares, on the same Redis and the same Lua script:
  * the coalesced Rust `Pool` (one script call per batch of waiting callers),
  * redis-py asyncio calling the script once per request (EVALSHA, 256 connections),
  * redis-benchmark sending the same EVALSHA once per request (the single-shard ceiling).

Usage: python -m bench.pool.bench_take [--url redis://127.0.0.1:6379/0] [--takes 200000]
Prints one line per contender and the ratios. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import redis
import redis.asyncio as aredis

from engine import OutOfStock, Pool

CALLERS = 256
LUA = Path(__file__).resolve().parents[2] / "core_rs" / "src" / "pool" / "lua"


def ops_script() -> str:
    return (LUA / "lib.lua").read_text() + (LUA / "ops.lua").read_text()


def ciphertext(i: int) -> bytes:
    # 1 version + 4 key id + 12 nonce + 32 code + 16 tag = 65 bytes, like the real thing.
    return b"\x01" + i.to_bytes(4, "big") + b"\x00" * 12 + i.to_bytes(32, "big") + b"\xee" * 16


async def fill(pool: Pool, sku: str, n: int) -> float:
    started = time.perf_counter()
    chunk = 50_000
    for first in range(1, n + 1, chunk):
        ids = range(first, min(first + chunk, n + 1))
        await pool.load(sku, [(i, ciphertext(i), 0) for i in ids])
    return n / (time.perf_counter() - started)


async def bench_rust(pool: Pool, sku: str, takes: int) -> float:
    per = takes // CALLERS

    async def caller(c: int) -> None:
        for k in range(per):
            await pool.take(sku, f"r{c}-{k}", 1)

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(CALLERS)))
    return per * CALLERS / (time.perf_counter() - started)


async def bench_redis_py(url: str, tag: str, takes: int) -> float:
    client = aredis.Redis.from_url(url, max_connections=CALLERS)
    sha = await client.script_load(ops_script())
    per = takes // CALLERS

    async def caller(c: int) -> None:
        for k in range(per):
            reply = await client.evalsha(
                sha, 1, tag, "", 86_400_000, 32, "T", f"p{c}-{k}", 1, 0, ""
            )
            # Flat reply: status, count, entries.
            if reply[0] != 0:
                raise OutOfStock(str(reply))
            _ = [(int.from_bytes(e[:8], "big"), e[8:]) for e in reply[2:]]

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(CALLERS)))
    rate = per * CALLERS / (time.perf_counter() - started)
    await client.aclose()
    return rate


def bench_redis_benchmark(url: str, tag: str, takes: int) -> float | None:
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return None
    sync = redis.Redis.from_url(url)
    sha = sync.script_load(ops_script())
    sync.close()
    m = re.match(r"redis://([^:/]+):(\d+)", url)
    host, port = (m.group(1), m.group(2)) if m else ("127.0.0.1", "6379")
    # __rand_int__ makes (mostly) distinct holders; a repeated one is a dedup hit, which
    # still runs the whole script.
    cmd = [
        binary,
        "-h",
        host,
        "-p",
        port,
        "-n",
        str(takes),
        "-c",
        str(CALLERS),
        "-r",
        "1000000000",
        "--csv",
        "EVALSHA",
        sha,
        "1",
        tag,
        "",
        "86400000",
        "32",
        "T",
        "b__rand_int__",
        "1",
        "0",
        "",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # CSV: "test","rps",...
    line = [ln for ln in out.splitlines() if ln.startswith('"EVALSHA')][-1]
    return float(line.split(",")[1].strip('"'))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--takes", type=int, default=200_000)
    args = parser.parse_args()
    ns = f"bench{uuid.uuid4().hex[:6]}"
    pool = Pool(args.url, namespace=ns)
    n = args.takes + CALLERS
    try:
        load_rate = await fill(pool, "RUST", n)
        await fill(pool, "PY", n)
        await fill(pool, "RB", n)
        rust = await bench_rust(pool, "RUST", args.takes)
        py = await bench_redis_py(args.url, f"{{{ns}:pool:PY:0}}", args.takes // 4)
        rb = bench_redis_benchmark(args.url, f"{{{ns}:pool:RB:0}}", args.takes)
        print(f"load: {load_rate:,.0f} entries/s")
        print(f"rust coalesced Pool.take   : {rust:,.0f} takes/s")
        print(f"redis-py asyncio EVALSHA   : {py:,.0f} takes/s  (ratio {rust / py:.1f}x)")
        if rb is not None:
            print(f"redis-benchmark EVALSHA    : {rb:,.0f} takes/s  (ratio {rust / rb:.2f}x)")
        print(f"stock RUST: {await pool.stock('RUST')}, RB: {await pool.stock('RB')}")
    finally:
        for sku in ("RUST", "PY", "RB"):
            await pool.drain(sku)


if __name__ == "__main__":
    asyncio.run(main())
