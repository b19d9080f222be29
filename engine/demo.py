"""The demo a newcomer gets on the first `make run`: a product with 1,000 generated keys,
an agent level, a funded demo agent and its API key."""

from __future__ import annotations

import secrets

import asyncpg
import structlog

from engine.auth import ApiKeyMode
from engine.catalog.service import ProductType, create_product
from engine.crypto.keyring import load_keyring
from engine.distribution.service import create_agent, create_api_key, create_level
from engine.inventory.service import add_codes
from engine.ledger.service import deposit
from engine.storage.db import Connection

log = structlog.get_logger(__name__)

DEMO_SKU = "DEMO-VIP-MONTH"
DEMO_KEYS = 1000
DEMO_PRICE = 1990  # ¥19.90
DEMO_AGENT_PRICE = 1500
DEMO_DEPOSIT = 1_000_000  # ¥10,000.00
DEMO_AGENT_NAME = "Demo storefront"
_DEMO_LOCK = 0x4B414D4944454D4F  # "KAMIDEMO"


def _demo_code() -> str:
    # Shaped like a real membership code: four groups of four, no ambiguous characters.
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4))


async def seed_demo_if_absent(conn: Connection, master_key: bytes) -> str | None:
    """Seed the demo once; return the demo agent's API key when this call created it."""
    keyring = await load_keyring(conn, master_key)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _DEMO_LOCK)
        if await conn.fetchval("SELECT 1 FROM products WHERE sku = $1", DEMO_SKU):
            return None
        product = await create_product(
            conn, sku=DEMO_SKU, name="视频会员月卡 (demo)", type=ProductType.CARD, price=DEMO_PRICE
        )
        codes = {_demo_code() for _ in range(DEMO_KEYS)}
        while len(codes) < DEMO_KEYS:
            codes.add(_demo_code())
        batch = await add_codes(
            conn, keyring, product, sorted(codes), name="demo", source="demo", unit_cost=1000
        )
        level = await create_level(
            conn, name="Demo level", rank=1, prices={DEMO_SKU: DEMO_AGENT_PRICE}, visible_skus=None
        )
        agent = await create_agent(conn, name=DEMO_AGENT_NAME, level_id=level.id)
        agent_id = agent.id
        await deposit(conn, agent_id, DEMO_DEPOSIT, reference="demo")
        _, key, _ = await create_api_key(conn, agent_id, ApiKeyMode.LIVE)
        await conn.execute(
            "INSERT INTO audit_log (actor, action, subject) VALUES ('system', 'demo.seeded', $1)",
            f"product:{DEMO_SKU}",
        )
    log.info("demo_seeded", sku=DEMO_SKU, keys=batch.accepted, agent_id=agent_id)
    return key


async def new_demo_api_key(database_url: str) -> str:
    """A fresh API key for the demo agent (the first one was shown once at seeding)."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            agent_id = await conn.fetchval(
                "SELECT id FROM agents WHERE name = $1 ORDER BY id LIMIT 1", DEMO_AGENT_NAME
            )
            if agent_id is None:
                raise RuntimeError("the demo has not been seeded")
            _, key, _ = await create_api_key(conn, agent_id, ApiKeyMode.LIVE)
    finally:
        await conn.close()
    return key
