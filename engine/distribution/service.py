"""Agent levels, agents and their API keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from engine.auth import ApiKeyMode, hash_secret, new_api_key
from engine.ledger.service import AccountKind, agent_account_code, ensure_account


async def create_level(
    conn: asyncpg.Connection,
    *,
    name: str,
    rank: int,
    prices: Mapping[str, int],
    visible_skus: Sequence[str] | None,
) -> int:
    level_id: int = await conn.fetchval(
        "INSERT INTO agent_levels (name, rank, visible_skus) VALUES ($1, $2, $3) RETURNING id",
        name,
        rank,
        list(visible_skus) if visible_skus is not None else None,
    )
    await conn.executemany(
        "INSERT INTO agent_level_prices (level_id, product_id, price) "
        "SELECT $1, id, $3 FROM products WHERE sku = $2",
        [(level_id, sku, price) for sku, price in prices.items()],
    )
    return level_id


async def create_agent(
    conn: asyncpg.Connection,
    *,
    name: str,
    level_id: int,
    parent_id: int | None = None,
    credit_limit: int = 0,
    currency: str = "CNY",
) -> int:
    agent_id: int = await conn.fetchval(
        "INSERT INTO agents (name, level_id, parent_id, credit_limit) "
        "VALUES ($1, $2, $3, $4) RETURNING id",
        name,
        level_id,
        parent_id,
        credit_limit,
    )
    await ensure_account(
        conn,
        agent_account_code(agent_id),
        AccountKind.LIABILITY,
        currency=currency,
        agent_id=agent_id,
    )
    return agent_id


async def create_api_key(
    conn: asyncpg.Connection, agent_id: int, mode: ApiKeyMode = ApiKeyMode.LIVE
) -> tuple[int, str]:
    """Create a key; returns (id, the key). The key is shown once: only its hash is kept."""
    key = new_api_key(mode)
    key_id: int = await conn.fetchval(
        "INSERT INTO api_keys (agent_id, mode, prefix, secret_hash) VALUES ($1, $2, $3, $4) "
        "RETURNING id",
        agent_id,
        mode.value,
        key[: len(f"kami_{mode.value}_") + 6],
        hash_secret(key),
    )
    return key_id, key
