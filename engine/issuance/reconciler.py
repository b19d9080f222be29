"""Returns keys taken from a pool whose issuance never reached PostgreSQL.

A worker that dies between `take` and its commit leaves entries issued in Redis that no
issuance owns; the same for a paid order between confirming its hold and recording the
delivery. Every pass lists the pools' issuance holders; a holder with no committed
issuance in two passes at least `grace_s` apart is restored to the pool. The grace period
covers requests still between take and commit. Only one process reconciles at a time
(a PostgreSQL advisory lock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import structlog

from engine._core import EngineError, Pool
from engine.inventory.pools import pool_name

log = structlog.get_logger(__name__)

ISSUANCE_HOLDER_PREFIX = "iss:"
# Storefront orders (engine.orders) confirm their holds under this prefix.
ORDER_HOLDER_PREFIX = "ord:"
GRACE_S = 30.0
INTERVAL_S = 60.0
# Holder names checked against PostgreSQL per query.
_CHUNK = 5000
_LOCK = 0x4B414D495245434E  # "KAMIRECN"


class Reconciler:
    def __init__(
        self,
        db: asyncpg.Pool,
        pool: Pool,
        *,
        grace_s: float = GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._pool = pool
        self._grace_s = grace_s
        self._clock = clock
        self._suspects: dict[tuple[str, str], float] = {}

    async def run_once(self, *, wait: bool = False) -> int:
        """One pass over every product's pool; returns how many holders were restored.
        While another worker's pass runs, this one is skipped (0), unless `wait`."""
        async with self._db.acquire() as conn:
            if wait:
                await conn.execute("SELECT pg_advisory_lock($1)", _LOCK)
            elif not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK):
                return 0
            try:
                skus = [r["sku"] for r in await conn.fetch("SELECT sku FROM products")]
                restored = 0
                for sku in skus:
                    restored += await self._reconcile(conn, sku)
                    # The sandbox's pool of the product (test stock) has takers too.
                    restored += await self._reconcile(conn, pool_name(sku, "test"))
                return restored
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)

    async def _reconcile(self, conn: asyncpg.pool.PoolConnectionProxy, sku: str) -> int:
        holders = [
            h
            for h in await self._pool.holders(sku)
            if h.startswith((ISSUANCE_HOLDER_PREFIX, ORDER_HOLDER_PREFIX))
        ]
        if not holders:
            return 0
        committed: set[str] = set()
        for start in range(0, len(holders), _CHUNK):
            # An order's keys are committed once it has order_keys (delivered, refunded).
            rows = await conn.fetch(
                "SELECT holder FROM issuances WHERE holder = ANY($1::text[]) "
                "UNION ALL SELECT o.holder FROM orders o WHERE o.holder = ANY($1::text[]) "
                "AND EXISTS (SELECT 1 FROM order_keys k WHERE k.order_id = o.id)",
                holders[start : start + _CHUNK],
            )
            committed.update(r["holder"] for r in rows)
        now = self._clock()
        restored = 0
        for holder in holders:
            key = (sku, holder)
            if holder in committed:
                self._suspects.pop(key, None)
                continue
            first_seen = self._suspects.setdefault(key, now)
            if now - first_seen < self._grace_s:
                continue
            # Still uncommitted after the grace period: the taker is gone.
            count = await self._pool.restore(sku, holder)
            self._suspects.pop(key, None)
            if count:
                restored += 1
                log.warning("orphaned_take_restored", sku=sku, entries=count)
        return restored

    async def run_forever(self, interval_s: float = INTERVAL_S) -> None:
        while True:
            try:
                await self.run_once()
            except (EngineError, OSError, asyncpg.PostgresError) as exc:
                log.warning("reconcile_failed", error=type(exc).__name__)
            await asyncio.sleep(interval_s)
