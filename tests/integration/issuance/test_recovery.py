"""Invariant 3: Redis is rebuildable, and keys lost between take and commit come back."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import redis.asyncio as aioredis

from engine._core import Pool
from engine.inventory.pools import rebuild
from engine.issuance.reconciler import Reconciler
from engine.settings import Settings
from tests.integration.issuance.conftest import make_shop


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_orphaned_take_is_restored_after_the_grace_period(
    app_client: httpx.AsyncClient, operator_token: str, settings: Settings, database_url: str
) -> None:
    shop = await make_shop(app_client, operator_token, keys=10)
    assert (await shop.issue(2)).status_code == 201  # a committed holder: must stay issued
    assert settings.redis_url is not None
    pool = Pool(settings.redis_url.get_secret_value(), namespace=settings.redis_namespace)
    # A worker that took three keys and died before its commit.
    taken = await pool.take(shop.sku, "iss:999:crashed", 3)
    assert len(taken) == 3
    assert (await pool.stock(shop.sku))[0] == 5

    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    clock = FakeClock()
    reconciler = Reconciler(db, pool, grace_s=30, clock=clock)
    try:
        assert await reconciler.run_once(wait=True) == 0  # first sighting: maybe still in flight
        clock.now += 10
        assert await reconciler.run_once(wait=True) == 0
        clock.now += 25
        assert await reconciler.run_once(wait=True) == 1
        assert await reconciler.run_once(wait=True) == 0
    finally:
        await db.close()
    available, _, issued = await pool.stock(shop.sku)
    assert (available, issued) == (8, 2)
    # Everything is issuable again, and nothing twice.
    codes: list[str] = []
    for _ in range(8):
        response = await shop.issue(1)
        assert response.status_code == 201
        codes.append(response.json()["keys"][0]["code"])
    assert len(set(codes)) == 8
    assert (await shop.issue(1)).status_code == 409


async def test_a_flushed_redis_is_rebuilt_and_issues_nothing_twice(
    app_client: httpx.AsyncClient, operator_token: str, settings: Settings
) -> None:
    shop = await make_shop(app_client, operator_token, keys=40)
    first = await asyncio.gather(*(shop.issue(1) for _ in range(15)))
    assert {r.status_code for r in first} == {201}
    assert settings.redis_url is not None
    client = aioredis.from_url(settings.redis_url.get_secret_value())
    try:
        # FLUSHALL would also wipe other tests' namespaces; this pool's keys are enough.
        keys = [k async for k in client.scan_iter(match=f"{{{settings.redis_namespace}:pool:*")]
        await client.delete(*keys)
    finally:
        await client.aclose()
    rest = await asyncio.gather(*(shop.issue(1) for _ in range(30)))
    statuses = [r.status_code for r in rest]
    assert statuses.count(201) == 25
    assert statuses.count(409) == 5
    codes = [r.json()["keys"][0]["code"] for r in [*first, *rest] if r.status_code == 201]
    assert len(codes) == len(set(codes)) == 40
    assert await shop.stock() == {"available": 0, "held": 0, "issued": 40}


async def test_rebuild_matches_postgresql(
    app_client: httpx.AsyncClient, operator_token: str, settings: Settings, database_url: str
) -> None:
    shop = await make_shop(app_client, operator_token, keys=12)
    assert (await shop.issue(5)).status_code == 201
    assert settings.redis_url is not None
    pool = Pool(settings.redis_url.get_secret_value(), namespace=settings.redis_namespace)
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        assert await rebuild(db, pool, shop.sku) == 7
    finally:
        await db.close()
    assert await pool.stock(shop.sku) == (7, 0, 5)


async def test_a_key_offered_again_is_refused_at_commit_and_the_retry_succeeds(
    app_client: httpx.AsyncClient, operator_token: str, settings: Settings, database_url: str
) -> None:
    shop = await make_shop(app_client, operator_token, keys=5)
    first = await shop.issue(1)
    assert first.status_code == 201
    issued_code = first.json()["keys"][0]["code"]

    # A stale rebuild (say, from a lagging replica) puts the issued key back in the pool.
    assert settings.redis_url is not None
    pool = Pool(settings.redis_url.get_secret_value(), namespace=settings.redis_namespace)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id, ciphertext, batch_id FROM card_keys WHERE product_id = "
            "(SELECT id FROM products WHERE sku = $1) ORDER BY id",
            shop.sku,
        )
    finally:
        await conn.close()
    await pool.rebuild(shop.sku, [(r["id"], r["ciphertext"], 0, r["batch_id"]) for r in rows])

    alarms_before = await _alarms(app_client)
    alarmed = await shop.issue(1, key="retry-me")
    assert alarmed.status_code == 503
    assert alarmed.json()["code"] == "integrity_alarm"
    assert "retry-after" in alarmed.headers
    assert await _alarms(app_client) == alarms_before + 1

    retried = await shop.issue(1, key="retry-me")
    assert retried.status_code == 201, retried.text
    assert retried.json()["keys"][0]["code"] != issued_code
    # The key issued first never reaches a second buyer.
    rest = [await shop.issue(1) for _ in range(4)]
    codes = [r.json()["keys"][0]["code"] for r in rest if r.status_code == 201]
    assert issued_code not in codes
    assert len(codes) == 3


async def _alarms(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    line = next(ln for ln in text.splitlines() if ln.startswith("kami_integrity_alarms_total "))
    return float(line.split()[-1])
