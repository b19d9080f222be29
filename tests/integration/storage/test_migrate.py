from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from engine.storage.migrate import MigrationError, discover, migrate
from tests.support.stores import StoreEndpoints, create_database, drop_database, new_run_id


@pytest.fixture
async def blank_database(stores: StoreEndpoints) -> AsyncIterator[str]:
    name = f"kami_blank_{new_run_id()}"
    url = await create_database(stores.admin_database_url, name)
    yield url
    await drop_database(stores.admin_database_url, name)


def test_shipped_migrations_are_numbered_in_order() -> None:
    versions = [m.version for m in discover()]
    assert versions == list(range(1, len(versions) + 1))


async def test_migrate_is_idempotent(blank_database: str) -> None:
    conn = await asyncpg.connect(blank_database)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    assert len(first) == len(discover()) == recorded
    assert second == []


async def test_concurrent_starters_apply_each_migration_once(blank_database: str) -> None:
    conns = [await asyncpg.connect(blank_database) for _ in range(8)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        for c in conns:
            await c.close()
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(set(applied))  # nobody applied one twice
    assert len(applied) == len(discover())
    assert [r["version"] for r in rows] == [m.version for m in discover()]


async def test_an_edited_migration_is_refused(blank_database: str, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
    conn = await asyncpg.connect(blank_database)
    try:
        await migrate(conn, tmp_path)
        (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id bigint);")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, tmp_path)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(
    blank_database: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok_table (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT 1/0;")
    conn = await asyncpg.connect(blank_database)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, tmp_path)
        versions = await conn.fetch("SELECT version FROM schema_migrations")
        half = await conn.fetchval("SELECT to_regclass('half')")
        locks = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    finally:
        await conn.close()
    assert [r["version"] for r in versions] == [1]
    assert half is None
    assert locks == 0


def test_bad_file_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_no_padding.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_name"):
        discover(tmp_path)
