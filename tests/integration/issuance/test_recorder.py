"""The group-commit recorder and its SQL function against real PostgreSQL: within one flush,
debits are checked in arrival order, and those that do not fit are refused while the rest
commit."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from engine.issuance.recorder import GroupCommitRecorder, Outcome, PendingIssuance
from engine.issuance.service import holder_for
from tests.integration.issuance.conftest import Shop, make_shop


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def pending_for(db: asyncpg.Pool, shop: Shop, count: int) -> list[PendingIssuance]:
    """Issuances of one key each, straight to the recorder (the pool is not involved:
    the flush checks the keys' state in PostgreSQL itself)."""
    product_id = await db.fetchval("SELECT id FROM products WHERE sku = $1", shop.sku)
    keys = await db.fetch(
        "SELECT id FROM card_keys WHERE product_id = $1 AND state = 'available' "
        "ORDER BY id LIMIT $2",
        product_id,
        count,
    )
    idempotency_keys = [f"rec-{secrets.token_hex(6)}" for _ in keys]
    return [
        PendingIssuance(
            agent_id=shop.agent_id,
            api_key_id=None,
            idempotency_key=idempotency_key,
            request_hash=b"\0" * 32,
            product_id=product_id,
            sku=shop.sku,
            unit_price=shop.price,
            currency="CNY",
            reference=None,
            holder=holder_for(shop.agent_id, idempotency_key),
            entry_ids=[row["id"]],
        )
        for idempotency_key, row in zip(idempotency_keys, keys, strict=True)
    ]


async def test_debits_beyond_the_funds_are_refused_in_arrival_order_within_one_flush(
    app_client: httpx.AsyncClient, operator_token: str, db: asyncpg.Pool
) -> None:
    shop = await make_shop(app_client, operator_token, keys=5, deposit=3000, price=1000)
    items = await pending_for(db, shop, 5)
    recorder = GroupCommitRecorder(db)
    try:
        # Queued before the recorder's runner starts: one flush of five, three of which fit.
        results = await asyncio.gather(*(recorder.record(item) for item in items))
    finally:
        await recorder.close()
    assert [r.outcome for r in results] == [Outcome.COMMITTED] * 3 + [
        Outcome.INSUFFICIENT_BALANCE
    ] * 2
    assert [r.balance_after for r in results] == [0, 0, 0, 0, 0]
    assert [r.spendable_after for r in results[:3]] == [0, 0, 0]
    assert await shop.balance() == 0
    stored = await db.fetchval("SELECT count(*) FROM issuances WHERE sku = $1", shop.sku)
    marked = await db.fetchval(
        "SELECT count(*) FROM card_keys c JOIN products p ON p.id = c.product_id "
        "WHERE p.sku = $1 AND c.state = 'issued'",
        shop.sku,
    )
    assert (stored, marked) == (3, 3)
