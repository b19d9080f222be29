"""The release job run by every worker at once releases each due commission exactly once,
and a refund racing it takes the commission back from wherever it ends up."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from engine._core import Pool
from engine.catalog.service import ProductType, create_product
from engine.crypto.keyring import load_keyring
from engine.distribution.service import create_agent, create_api_key, create_level
from engine.inventory.files import screen_codes
from engine.inventory.pools import rebuild
from engine.inventory.service import add_codes
from engine.issuance.service import IssuanceService
from engine.ledger import commissions
from engine.ledger.service import deposit, post, trial_balance
from engine.principals import AgentKey
from engine.settings import Settings, decode_master_key

ISSUANCES = 30
PARENT_PRICE, PRICE = 400, 500


@pytest.fixture
async def held(database_url: str, redis_url: str, settings: Settings) -> tuple[int, int]:
    """A parent whose level holds commissions 2 days, and ISSUANCES purchases by its child;
    returns (parent id, child id)."""
    assert settings.master_key is not None
    sku = f"RL-{secrets.token_hex(4).upper()}"
    conn = await asyncpg.connect(database_url)
    try:
        keyring = await load_keyring(
            conn, decode_master_key(settings.master_key.get_secret_value())
        )
        async with conn.transaction():
            product = await create_product(conn, sku=sku, name="r", type=ProductType.CARD, price=9)
            codes, _ = screen_codes([f"{sku}-{i}" for i in range(ISSUANCES)])
            await add_codes(conn, keyring, product, codes)
            top = await create_level(
                conn, name="t", rank=2, prices={sku: PARENT_PRICE}, visible_skus=None
            )
            await commissions.set_hold_days(conn, top.id, 2)
            low = await create_level(conn, name="l", rank=1, prices={sku: PRICE}, visible_skus=None)
            parent = await create_agent(conn, name="p", level_id=top.id)
            child = await create_agent(conn, name="c", level_id=low.id, parent_id=parent.id)
            key_id, _, _ = await create_api_key(conn, child.id)
            await deposit(conn, child.id, PRICE * ISSUANCES)
    finally:
        await conn.close()
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    pool = Pool(redis_url, namespace=settings.redis_namespace)
    await rebuild(db, pool, sku)
    service = IssuanceService(db, pool, keyring)
    agent = AgentKey(key_id, child.id, low.id, "live")
    try:
        for n in range(ISSUANCES):
            await service.issue(
                agent,
                sku=sku,
                quantity=1,
                reference=None,
                idempotency_key=f"r{n}",
                request_hash=b"h" * 32,
            )
    finally:
        await service.close()
        await db.close()
    return parent.id, child.id


async def _books(conn: asyncpg.Connection, agent_id: int) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT a.code, -a.balance AS balance, (SELECT -coalesce(sum(l.amount), 0) "
        "FROM journal_lines l WHERE l.account_id = a.id) AS lines FROM accounts a "
        "WHERE a.agent_id = $1",
        agent_id,
    )
    assert all(r["balance"] == r["lines"] for r in rows)
    return {r["code"].split(":")[2]: r["balance"] for r in rows}


async def test_concurrent_releases_move_each_commission_once(
    database_url: str, held: tuple[int, int]
) -> None:
    parent, _ = held
    later = datetime.now(UTC) + timedelta(days=2, minutes=5)
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        before = await _books(conns[0], parent)
        assert before.get("held") == (PRICE - PARENT_PRICE) * ISSUANCES
        assert before.get("balance", 0) == 0
        # Not yet due: nothing moves.
        assert await commissions.release_held(conns[0], datetime.now(UTC)) == 0
        counts = await asyncio.gather(
            *(commissions.release_held(c, later, limit=ISSUANCES) for c in conns)
        )
        assert sum(counts) == ISSUANCES
        after = await _books(conns[0], parent)
        assert (after["held"], after["balance"]) == (0, (PRICE - PARENT_PRICE) * ISSUANCES)
        releases = await conns[0].fetchval(
            "SELECT count(*) FROM journal_entries WHERE kind = 'commission.release' "
            "AND reference IN (SELECT 'commission:' || id FROM commissions WHERE agent_id = $1)",
            parent,
        )
        assert releases == ISSUANCES
        assert (await trial_balance(conns[0])).balanced
    finally:
        for c in conns:
            await c.close()


async def test_a_reversal_racing_the_release_takes_the_money_from_where_it_is(
    database_url: str, held: tuple[int, int]
) -> None:
    """The reversal half of a refund (what an order refund does for its commissions),
    racing the release of the same commissions: each ends reversed or released-then-
    reversed, never both released and still counted, and the books stay whole."""
    parent, _ = held
    later = datetime.now(UTC) + timedelta(days=3)
    references = [
        r["reference"]
        for r in await _fetch(
            database_url,
            "SELECT reference FROM commissions WHERE agent_id = $1 ORDER BY id",
            parent,
        )
    ]

    async def reverse_all() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for reference in references:
                async with conn.transaction():
                    taken = await commissions.reverse(conn, "issuance", reference, later)
                    if not taken:
                        continue
                    platform = await conn.fetchval(
                        "SELECT id FROM accounts WHERE code = 'platform:revenue:CNY'"
                    )
                    total = sum(amount for _, _, amount in taken)
                    lines = [(account, amount) for _, account, amount in taken]
                    entry = await post(conn, "test.reversal", [*lines, (platform, -total)])
                    await commissions.link_reversal(conn, [c for c, _, _ in taken], entry)
        finally:
            await conn.close()

    async def release() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return await commissions.release_held(conn, later, limit=ISSUANCES)
        finally:
            await conn.close()

    _, released = await asyncio.gather(reverse_all(), release())
    conn = await asyncpg.connect(database_url)
    try:
        books = await _books(conn, parent)
        states = await conn.fetch(
            "SELECT released_at IS NOT NULL AS released, reversed_at IS NOT NULL AS reversed "
            "FROM commissions WHERE agent_id = $1",
            parent,
        )
        assert (await trial_balance(conn)).balanced
    finally:
        await conn.close()
    assert all(s["reversed"] for s in states)
    assert sum(s["released"] for s in states) == released
    # Every commission was taken back: from held if it was still there, else the balance.
    assert (books.get("held", 0), books.get("balance", 0)) == (0, 0)


async def _fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()
