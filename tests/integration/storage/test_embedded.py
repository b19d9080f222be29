"""The embedded default's lifecycle: start, restart with data kept, recovery after kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis

from engine.storage.embedded import DataDirInUse, EmbeddedStores

pytestmark = pytest.mark.slow


def _processes_using(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline and proc.pid != os.getpid():
            found.append(proc)
    return found


async def _write(database_url: str, value: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS kept (value text)")
        await conn.execute("INSERT INTO kept VALUES ($1)", value)
    finally:
        await conn.close()


async def _read(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [r["value"] for r in await conn.fetch("SELECT value FROM kept ORDER BY value")]
    finally:
        await conn.close()


def test_restart_keeps_data_and_stop_leaves_no_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    with EmbeddedStores(data_dir) as stores:
        assert stores.database_url and stores.redis_url
        asyncio.run(_write(stores.database_url, "first"))
        client = redis.Redis.from_url(stores.redis_url)
        client.set("kept", "1")
        client.close()
    assert _processes_using(data_dir) == []

    with EmbeddedStores(data_dir) as stores:
        assert stores.database_url and stores.redis_url
        assert asyncio.run(_read(stores.database_url)) == ["first"]
        client = redis.Redis.from_url(stores.redis_url)
        assert client.get("kept") == b"1"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    assert _processes_using(data_dir) == []


def test_recovers_after_its_owner_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import asyncio, time, asyncpg, redis
                from pathlib import Path
                from engine.storage.embedded import EmbeddedStores
                stores = EmbeddedStores(Path({str(data_dir)!r})).start()
                async def write():
                    conn = await asyncpg.connect(stores.database_url)
                    await conn.execute("CREATE TABLE kept (value text)")
                    await conn.execute("INSERT INTO kept VALUES ('before-kill')")
                    await conn.close()
                asyncio.run(write())
                redis.Redis.from_url(stores.redis_url).set("kept", "before-kill")
                print("READY", flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        for line in owner.stdout:  # log lines come first
            if line.strip() == "READY":
                break
        else:
            pytest.fail("the owner process died before it was ready")

        # While the owner lives, the data dir is refused with a clear message.
        with pytest.raises(DataDirInUse, match=f"pid {owner.pid}"):
            EmbeddedStores(data_dir).start()

        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=10)
        if owner.stdout is not None:
            owner.stdout.close()

    # Its servers are orphaned now; a new owner takes over and finds the data.
    with EmbeddedStores(data_dir) as stores:
        assert stores.database_url and stores.redis_url
        assert asyncio.run(_read(stores.database_url)) == ["before-kill"]
        client = redis.Redis.from_url(stores.redis_url)
        assert client.get("kept") == b"before-kill"
        client.close()
    assert _processes_using(data_dir) == []


def test_a_second_owner_in_one_process_is_refused(tmp_path: Path) -> None:
    with EmbeddedStores(tmp_path / "var", postgres=False) as first:
        assert first.redis_url
        with pytest.raises(DataDirInUse, match="in use by another Kami process"):
            EmbeddedStores(tmp_path / "var", postgres=False).start()
