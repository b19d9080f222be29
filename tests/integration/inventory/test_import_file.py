"""`kami import` end to end: file → PostgreSQL → pool, with the pool load overlapping the
insert (parked entries), and a failed import leaving nothing behind in either store."""

from __future__ import annotations

import asyncio
import base64
import secrets
from pathlib import Path

import asyncpg
import pytest
import redis

from engine import Pool
from engine.catalog.service import ProductType, create_product
from engine.crypto.keyring import load_keyring
from engine.inventory import service as inventory
from engine.inventory.importer import import_file


async def _product(database_url: str, master_key: bytes, redis_url: str, namespace: str) -> str:
    sku = f"IMP-{secrets.token_hex(4).upper()}"
    conn = await asyncpg.connect(database_url)
    try:
        await load_keyring(conn, master_key)
        await create_product(conn, sku=sku, name="n", type=ProductType.CARD, price=100)
    finally:
        await conn.close()
    await Pool(redis_url, namespace=namespace).rebuild(sku, [], issued=0)
    return sku


async def _import(
    database_url: str, redis_url: str, namespace: str, key: bytes, sku: str, path: Path
) -> int:
    report = await import_file(
        database_url,
        redis_url,
        namespace,
        key,
        sku=sku,
        path=path,
        name=path.name,
        expires_at=None,
        unit_cost=0,
        file_format=None,
        column=None,
    )
    return report.batch.accepted


def _parked_keys(redis_url: str, namespace: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [k for k in client.scan_iter(match=f"{{{namespace}:*", count=1000) if b":p:" in k]
    finally:
        client.close()


async def test_imports_load_the_pool_and_skip_what_is_there(
    database_url: str, redis_url: str, namespace: str, master_key: str, tmp_path: Path
) -> None:
    key = base64.b64decode(master_key)
    sku = await _product(database_url, key, redis_url, namespace)
    first = tmp_path / "first.txt"
    first.write_text("".join(f"{sku}-A{n}\n" for n in range(5000)))
    assert await _import(database_url, redis_url, namespace, key, sku, first) == 5000
    pool = Pool(redis_url, namespace=namespace)
    assert await pool.stock(sku) == (5000, 0, 0)
    # Half of these are in the inventory already: only the new half reaches the pool.
    second = tmp_path / "second.txt"
    second.write_text("".join(f"{sku}-A{n}\n" for n in range(2500, 7500)))
    assert await _import(database_url, redis_url, namespace, key, sku, second) == 2500
    assert await pool.stock(sku) == (7500, 0, 0)
    assert _parked_keys(redis_url, namespace) == []


async def test_a_failed_import_leaves_nothing_parked_or_stored(
    database_url: str,
    redis_url: str,
    namespace: str,
    master_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = base64.b64decode(master_key)
    sku = await _product(database_url, key, redis_url, namespace)
    path = tmp_path / "keys.txt"
    path.write_text("".join(f"{sku}-B{n}\n" for n in range(3000)))

    async def insert_then_fail(*_args: object) -> int:
        await asyncio.sleep(0.5)  # the pool has parked the batch by now
        raise asyncpg.DiskFullError("simulated")

    monkeypatch.setattr(inventory, "_insert_keys", insert_then_fail)
    with pytest.raises(asyncpg.DiskFullError):
        await _import(database_url, redis_url, namespace, key, sku, path)
    assert await Pool(redis_url, namespace=namespace).stock(sku) == (0, 0, 0)
    assert _parked_keys(redis_url, namespace) == []
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM card_keys k JOIN products p ON p.id = k.product_id "
            "WHERE p.sku = $1",
            sku,
        )
    finally:
        await conn.close()
    assert stored == 0
