"""Where the tests' PostgreSQL and Redis come from.

By default an embedded PostgreSQL and Valkey are started once per test session (nothing
needs to be installed). With `KAMI_TEST_DATABASE_URL` and `KAMI_TEST_REDIS_URL` set, those
servers are used instead. Either way each run gets its own fresh database and its own
Redis key namespace, removed at the end, so runs never see each other's data.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

from engine.storage.embedded import EmbeddedStores


@dataclass(frozen=True)
class StoreEndpoints:
    admin_database_url: str  # a database to CREATE/DROP from
    redis_url: str
    external: bool


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextmanager
def open_test_stores(tmp_dir: Path) -> Iterator[StoreEndpoints]:
    database_url = os.environ.get("KAMI_TEST_DATABASE_URL")
    redis_url = os.environ.get("KAMI_TEST_REDIS_URL")
    if database_url and redis_url:
        yield StoreEndpoints(database_url, redis_url, external=True)
        return
    stores = EmbeddedStores(tmp_dir, postgres=not database_url, valkey=not redis_url).start()
    try:
        yield StoreEndpoints(
            database_url or str(stores.database_url),
            redis_url or str(stores.redis_url),
            external=False,
        )
    finally:
        stores.stop()


async def create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def delete_namespace(redis_url: str, namespace: str) -> int:
    client = redis.Redis.from_url(redis_url)
    removed = 0
    try:
        # Keys are hash-tagged: "{ns:...}" as well as plain "ns:..." prefixes.
        for pattern in (f"{namespace}:*", f"{{{namespace}:*"):
            batch = list(client.scan_iter(match=pattern, count=1000))
            if batch:
                removed += int(client.unlink(*batch))
    finally:
        client.close()
    return removed


def new_run_id() -> str:
    return secrets.token_hex(4)
