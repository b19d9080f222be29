"""Keeping the Redis pools in step with PostgreSQL, the source of truth.

Every available card key is also an entry in its product's pool: `(id, ciphertext,
priority)`. The priority makes the pool hand out the batch that expires first, then the
oldest batch. A pool that is missing from Redis (flushed, a new Redis) is rebuilt from
PostgreSQL before it serves again; rebuilds of one SKU are serialised across processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import structlog

from engine._core import EngineError, Pool
from engine.inventory.service import BatchResult
from engine.runtime import require_urls
from engine.settings import Settings

log = structlog.get_logger(__name__)

_NO_EXPIRY = 1 << 32  # seconds: after every real expiry date (year 2106)
_BATCH_BITS = 20
# Advisory lock space for pool rebuilds: "KAMIPOOL" in the high bytes, product id below.
_REBUILD_LOCK_BASE = 0x4B414D49 << 32
# Test stock (batches imported with mode "test") has a pool of its own, named by a suffix
# no SKU can carry, so the Rust pool needs no notion of modes and a live take can never
# reach a test entry. Ciphertexts stay bound to the product's SKU, not the pool name.
TEST_POOL_SUFFIX = "~test"


def pool_name(sku: str, mode: str = "live") -> str:
    return sku + TEST_POOL_SUFFIX if mode == "test" else sku


def priority(expires_at: datetime | None, batch_id: int) -> int:
    """Earliest expiry first, then the older batch; exact in a Redis score (< 2^53)."""
    expiry = int(expires_at.timestamp()) if expires_at is not None else _NO_EXPIRY
    return (min(expiry, _NO_EXPIRY) << _BATCH_BITS) | (batch_id & ((1 << _BATCH_BITS) - 1))


async def load_batch(
    pool: Pool,
    sku: str,
    batch_id: int,
    expires_at: datetime | None,
    ids: Sequence[int],
    ciphertexts: Sequence[bytes],
) -> int:
    """Add a batch's keys (ids in increasing order) to the pool; returns how many were new."""
    return await pool.load_sorted(
        sku, ids, ciphertexts, priority=priority(expires_at, batch_id), batch=batch_id
    )


async def rebuild(
    db: asyncpg.Pool, pool: Pool, sku: str, *, only_if_missing: bool = False, mode: str = "live"
) -> int:
    """Replace the pool of `sku` (of its `mode`'s stock) with PostgreSQL's available keys;
    returns how many.

    With `only_if_missing`, a pool another process rebuilt meanwhile is left alone: a second
    rebuild would put back entries taken since the first.
    """
    async with db.acquire() as conn, conn.transaction():
        product_id = await conn.fetchval("SELECT id FROM products WHERE sku = $1", sku)
        if product_id is None:
            return 0
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _REBUILD_LOCK_BASE + product_id)
        name = pool_name(sku, mode)
        if only_if_missing and await pool.exists(name):
            return 0
        rows = await conn.fetch(
            "SELECT k.id, k.ciphertext, k.batch_id, b.expires_at FROM batches b "
            "JOIN card_keys k ON k.batch_id = b.id "
            "WHERE b.product_id = $1 AND k.product_id = $1 AND k.state = 'available' "
            "AND b.mode = $2",
            product_id,
            mode,
        )
        issued = await conn.fetchval(
            "SELECT count(*) FROM card_keys k JOIN batches b ON b.id = k.batch_id "
            "WHERE k.product_id = $1 AND k.state = 'issued' AND b.mode = $2",
            product_id,
            mode,
        )
        entries = [
            (r["id"], r["ciphertext"], priority(r["expires_at"], r["batch_id"]), r["batch_id"])
            for r in rows
        ]
        count = await pool.rebuild(name, entries, issued=issued)
    log.warning("pool_rebuilt", sku=sku, mode=mode, available=count)
    return count


async def ensure_present(db: asyncpg.Pool, pool: Pool, sku: str, mode: str = "live") -> bool:
    """Rebuild the pool if Redis has lost it. True when it was missing (and has now been
    rebuilt, by this call or a concurrent one): a caller's retry can succeed."""
    if await pool.exists(pool_name(sku, mode)):
        return False
    await rebuild(db, pool, sku, only_if_missing=True, mode=mode)
    return True


async def publish_batch(
    db: asyncpg.Pool,
    pool: Pool,
    sku: str,
    batch_id: int,
    *,
    keys: tuple[Sequence[int], Sequence[bytes]] | None = None,
    expires_at: datetime | None = None,
    mode: str = "live",
) -> int:
    """Make a committed batch's keys available in the pool (of the batch's `mode`);
    returns how many were added.

    `keys` — the batch's (ids in increasing order, ciphertexts), with the batch's
    `expires_at` — spare reading them back when the importer still has them. A pool Redis
    does not have yet is built whole from PostgreSQL (which now includes this batch);
    loading only the batch would leave the product's earlier keys stranded.
    """
    if await ensure_present(db, pool, sku, mode):
        return 0  # rebuilt whole from PostgreSQL, this batch included
    if keys is None:
        rows = await db.fetch(
            "SELECT k.id, k.ciphertext, b.expires_at FROM card_keys k JOIN batches b "
            "ON b.id = k.batch_id WHERE k.batch_id = $1 AND k.state = 'available' "
            "ORDER BY k.id",
            batch_id,
        )
        if not rows:
            return 0
        expires_at = rows[0]["expires_at"]
        keys = ([r["id"] for r in rows], [r["ciphertext"] for r in rows])
    if not keys[0]:
        return 0
    return await load_batch(pool, pool_name(sku, mode), batch_id, expires_at, *keys)


# Parked entries of an import that never came back for them vanish after this.
PARK_TTL_S = 3600


class ParkedBatch:
    """An import's keys loaded into the pool while PostgreSQL is still writing them.

    Parked entries are invisible to takes; once the batch is committed they become
    available in one script call per shard, so the pool load overlaps the database insert
    instead of following it. Anything short of a clean commit with every key accepted
    falls back to `publish_batch`. Redis trouble while parking never fails the import.
    """

    def __init__(self, pool: Pool, sku: str, expires_at: datetime | None) -> None:
        self._pool = pool
        self._sku = sku
        self._expires_at = expires_at
        self._batch: int | None = None
        self._last_id = 0
        self._parked = False

    async def park(self, batch_id: int, ids: Sequence[int], ciphertexts: Sequence[bytes]) -> None:
        if not ids:
            return
        self._batch, self._last_id = batch_id, ids[-1]
        try:
            await self._pool.park_sorted(
                self._sku,
                ids,
                ciphertexts,
                priority=priority(self._expires_at, batch_id),
                batch=batch_id,
                ttl_s=PARK_TTL_S,
            )
            self._parked = True
        except EngineError as exc:
            log.warning("pool_park_failed", sku=self._sku, error=type(exc).__name__)

    async def discard(self) -> None:
        """The import did not commit: drop what was parked (best effort; a TTL backs it)."""
        if self._batch is None:
            return
        try:
            await self._pool.unpark(
                self._sku, priority=priority(self._expires_at, self._batch), batch=self._batch
            )
        except EngineError as exc:
            log.warning("pool_unpark_failed", sku=self._sku, error=type(exc).__name__)

    async def publish(self, db: asyncpg.Pool, batch: BatchResult) -> int:
        """After the commit: make the batch available; returns how many keys were added."""
        if self._parked and batch.keys is not None and batch.batch_id == self._batch:
            activated = await self._pool.activate_parked(
                self._sku,
                priority=priority(self._expires_at, batch.batch_id),
                batch=batch.batch_id,
                last_id=self._last_id,
            )
            if activated is not None:
                return activated
        elif self._parked:
            await self.discard()  # some keys were duplicates: the parked list is not the batch
        return await publish_batch(
            db,
            self._pool,
            self._sku,
            batch.batch_id,
            keys=batch.keys,
            expires_at=self._expires_at,
        )


async def rebuild_all(settings: Settings, sku: str | None = None) -> dict[str, int]:
    """`kami pools rebuild`: rebuild one product's pool or every product's."""
    database_url, redis_url = require_urls(settings)
    pool = Pool(redis_url, namespace=settings.redis_namespace)
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        if sku is None:
            skus = [r["sku"] for r in await db.fetch("SELECT sku FROM products ORDER BY sku")]
        else:
            skus = [sku] if await db.fetchval("SELECT 1 FROM products WHERE sku = $1", sku) else []
        counts = {name: await rebuild(db, pool, name) for name in skus}
        for name in skus:
            if await db.fetchval(
                "SELECT 1 FROM batches b JOIN products p ON p.id = b.product_id "
                "WHERE p.sku = $1 AND b.mode = 'test' LIMIT 1",
                name,
            ):
                counts[pool_name(name, "test")] = await rebuild(db, pool, name, mode="test")
        return counts
    finally:
        await db.close()
