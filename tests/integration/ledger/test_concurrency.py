"""10,000 concurrent debits on one agent through the real issuance path — four issuance
services (four group-commit recorders, as four workers have) over their own connection
pools, with withdrawal requests racing them — never take the agent below its credit limit,
and afterwards every balance is the sum of its journal lines."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncpg
import pytest

from engine._core import Pool
from engine.catalog.service import ProductType, create_product
from engine.crypto.keyring import load_keyring
from engine.distribution.service import create_agent, create_api_key, create_level
from engine.errors import DomainError
from engine.inventory.files import screen_codes
from engine.inventory.pools import rebuild
from engine.inventory.service import add_codes
from engine.issuance.service import IssuanceService
from engine.ledger import withdrawals
from engine.ledger.service import deposit, trial_balance
from engine.principals import AgentKey
from engine.settings import Settings, decode_master_key

pytestmark = pytest.mark.slow

REQUESTS = 10_000
KEYS = 10_500
PARENT_PRICE, PRICE = 7, 10
DEPOSIT = 70_000
CREDIT = 5_000
WORKERS = 4
WITHDRAWALS = 100
WITHDRAWAL = 150


@pytest.mark.timeout(300)
async def test_ten_thousand_concurrent_debits_respect_the_credit_limit(
    database_url: str, redis_url: str, settings: Settings
) -> None:
    assert settings.master_key is not None
    master_key = decode_master_key(settings.master_key.get_secret_value())
    sku = f"CC-{secrets.token_hex(4).upper()}"
    setup = await asyncpg.connect(database_url)
    try:
        keyring = await load_keyring(setup, master_key)
        async with setup.transaction():
            product = await create_product(
                setup, sku=sku, name="c", type=ProductType.CARD, price=99
            )
            codes, _ = screen_codes([f"{sku}-{i}-{secrets.token_hex(3)}" for i in range(KEYS)])
            await add_codes(setup, keyring, product, codes)
            top = await create_level(
                setup, name="t", rank=2, prices={sku: PARENT_PRICE}, visible_skus=None
            )
            low = await create_level(
                setup, name="l", rank=1, prices={sku: PRICE}, visible_skus=None
            )
            parent = await create_agent(setup, name="p", level_id=top.id)
            child = await create_agent(
                setup, name="c", level_id=low.id, parent_id=parent.id, credit_limit=CREDIT
            )
            key_id, _, _ = await create_api_key(setup, child.id)
            await deposit(setup, child.id, DEPOSIT)
    finally:
        await setup.close()
    agent = AgentKey(key_id, child.id, low.id, "live")

    pools = [
        await asyncpg.create_pool(database_url, min_size=1, max_size=3) for _ in range(WORKERS)
    ]
    redis_pool = Pool(redis_url, namespace=settings.redis_namespace)
    await rebuild(pools[0], redis_pool, sku)
    services = [IssuanceService(db, redis_pool, keyring) for db in pools]

    async def buy(n: int) -> Any:
        try:
            return await services[n % WORKERS].issue(
                agent,
                sku=sku,
                quantity=1,
                reference=None,
                idempotency_key=f"c{n}",
                request_hash=b"h" * 32,
            )
        except DomainError as exc:
            return str(exc.code)

    async def withdraw(n: int) -> Any:
        try:
            async with pools[n % WORKERS].acquire() as conn, conn.transaction():
                return await withdrawals.request(conn, child.id, WITHDRAWAL, actor="test")
        except DomainError as exc:
            return str(exc.code)

    try:
        outcomes = await asyncio.gather(
            *(buy(n) for n in range(REQUESTS)), *(withdraw(n) for n in range(WITHDRAWALS))
        )
    finally:
        for service in services:
            await service.close()
    bought = [o for o in outcomes[:REQUESTS] if not isinstance(o, str)]
    refused = [o for o in outcomes[:REQUESTS] if isinstance(o, str)]
    reserved = [o for o in outcomes[REQUESTS:] if not isinstance(o, str)]
    assert set(refused) <= {"insufficient_balance"}
    assert {o for o in outcomes[REQUESTS:] if isinstance(o, str)} <= {"insufficient_balance"}

    async with pools[0].acquire() as conn:
        rows = await conn.fetch(
            "SELECT a.code, -a.balance AS balance, "
            "(SELECT -coalesce(sum(l.amount), 0) FROM journal_lines l "
            " WHERE l.account_id = a.id) AS lines FROM accounts a "
            "WHERE a.agent_id = ANY($1::bigint[])",
            [child.id, parent.id],
        )
        totals = await trial_balance(conn)
        issued = await conn.fetchval(
            "SELECT count(*) FROM issuance_keys ik JOIN issuances i ON i.id = ik.issuance_id "
            "WHERE i.agent_id = $1",
            child.id,
        )
        distinct_keys = await conn.fetchval(
            "SELECT count(DISTINCT card_key_id) FROM issuance_keys ik "
            "JOIN issuances i ON i.id = ik.issuance_id WHERE i.agent_id = $1",
            child.id,
        )
    for db in pools:
        await db.close()

    books = {r["code"]: r["balance"] for r in rows}
    assert all(r["balance"] == r["lines"] for r in rows), rows
    assert totals.balanced
    balance = books[f"agent:{child.id}:balance"]
    withdrawing = books.get(f"agent:{child.id}:withdrawing", 0)
    assert balance >= -CREDIT
    assert balance + withdrawing >= -CREDIT
    assert withdrawing == WITHDRAWAL * len(reserved)
    assert balance == DEPOSIT - PRICE * len(bought) - WITHDRAWAL * len(reserved)
    assert issued == distinct_keys == len(bought)
    # Refusals happened only once the funds ran out: never more than one price short.
    assert refused, "the test must exhaust the funds"
    assert balance + CREDIT < PRICE
    assert books[f"agent:{parent.id}:balance"] == (PRICE - PARENT_PRICE) * len(bought)
