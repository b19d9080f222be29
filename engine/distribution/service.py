"""Agent levels, agents and their API keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from engine.auth import ApiKeyMode, hash_secret, new_api_key
from engine.distribution.tree import check_child_depth
from engine.errors import DomainError
from engine.ledger.service import AccountKind, agent_account_code, ensure_account
from engine.storage.db import Connection, Executor


class DistributionError(StrEnum):
    LEVEL_NOT_FOUND = "level_not_found"
    AGENT_NOT_FOUND = "agent_not_found"
    UNKNOWN_SKU = "unknown_sku"


@dataclass(frozen=True)
class Level:
    id: int
    name: str
    rank: int
    prices: dict[str, int]
    visible_skus: list[str] | None
    created_at: datetime


@dataclass(frozen=True)
class Agent:
    id: int
    name: str
    level_id: int
    parent_id: int | None
    balance: int
    credit_limit: int
    currency: str
    status: str
    created_at: datetime
    # Commissions waiting out their level's hold, and every commission earned (net of
    # reversals); both from engine.ledger.commissions.
    held: int = 0
    commission_total: int = 0
    test_balance: int = 0


async def _require_skus(conn: Connection, skus: Sequence[str]) -> dict[str, int]:
    rows = await conn.fetch("SELECT sku, id FROM products WHERE sku = ANY($1::text[])", list(skus))
    found = {row["sku"]: row["id"] for row in rows}
    missing = sorted(set(skus) - found.keys())
    if missing:
        raise DomainError(
            DistributionError.UNKNOWN_SKU,
            f"No product with SKU {', '.join(missing[:10])}.",
            skus=missing[:100],
        )
    return found


async def create_level(
    conn: Connection,
    *,
    name: str,
    rank: int,
    prices: Mapping[str, int],
    visible_skus: Sequence[str] | None,
) -> Level:
    product_ids = await _require_skus(conn, [*prices, *(visible_skus or [])])
    row = await conn.fetchrow(
        "INSERT INTO agent_levels (name, rank, visible_skus) VALUES ($1, $2, $3) "
        "RETURNING id, created_at",
        name,
        rank,
        list(visible_skus) if visible_skus is not None else None,
    )
    assert row is not None
    await conn.executemany(
        "INSERT INTO agent_level_prices (level_id, product_id, price) VALUES ($1, $2, $3)",
        [(row["id"], product_ids[sku], price) for sku, price in prices.items()],
    )
    await check_level_floors(conn, row["id"])
    return Level(
        id=row["id"],
        name=name,
        rank=rank,
        prices=dict(prices),
        visible_skus=list(visible_skus) if visible_skus is not None else None,
        created_at=row["created_at"],
    )


async def check_level_floors(conn: Connection, level_id: int) -> None:
    # engine.distribution.levels imports this module; its checks are imported late.
    from engine.distribution.levels import check_level

    await check_level(conn, level_id)


async def get_level(conn: Executor, level_id: int) -> Level:
    row = await conn.fetchrow(
        "SELECT id, name, rank, visible_skus, created_at FROM agent_levels WHERE id = $1",
        level_id,
    )
    if row is None:
        raise DomainError(DistributionError.LEVEL_NOT_FOUND, f"No agent level {level_id}.")
    prices = await conn.fetch(
        "SELECT p.sku, lp.price FROM agent_level_prices lp JOIN products p ON p.id = lp.product_id "
        "WHERE lp.level_id = $1 ORDER BY p.sku",
        level_id,
    )
    return Level(
        id=row["id"],
        name=row["name"],
        rank=row["rank"],
        prices={r["sku"]: r["price"] for r in prices},
        visible_skus=row["visible_skus"],
        created_at=row["created_at"],
    )


async def create_agent(
    conn: Connection,
    *,
    name: str,
    level_id: int,
    parent_id: int | None = None,
    credit_limit: int = 0,
    currency: str = "CNY",
    max_depth: int | None = None,
) -> Agent:
    if not await conn.fetchval("SELECT 1 FROM agent_levels WHERE id = $1", level_id):
        raise DomainError(DistributionError.LEVEL_NOT_FOUND, f"No agent level {level_id}.")
    if parent_id is not None and not await conn.fetchval(
        "SELECT 1 FROM agents WHERE id = $1", parent_id
    ):
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No parent agent {parent_id}.")
    if parent_id is not None and max_depth is not None:
        await check_child_depth(conn, parent_id, max_depth)
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
    return await get_agent(conn, agent_id)


async def get_agent(conn: Executor, agent_id: int) -> Agent:
    row = await conn.fetchrow(
        "SELECT a.id, a.name, a.level_id, a.parent_id, a.credit_limit, a.status, a.created_at, "
        "coalesce(-acc.balance, 0) AS balance, coalesce(acc.currency, 'CNY') AS currency, "
        "coalesce((SELECT -h.balance FROM accounts h WHERE h.code = 'agent:' || a.id || "
        "':held'), 0) AS held, coalesce((SELECT sum(c.amount) FROM commissions c "
        "WHERE c.agent_id = a.id AND c.reversed_at IS NULL), 0)::bigint AS commission_total, "
        "coalesce(-tst.balance, 0) AS test_balance "
        "FROM agents a LEFT JOIN accounts acc ON acc.code = 'agent:' || a.id || ':balance' "
        "LEFT JOIN accounts tst ON tst.code = 'agent:' || a.id || ':test_balance' "
        "WHERE a.id = $1",
        agent_id,
    )
    if row is None:
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent_id}.")
    return Agent(**dict(row))


async def create_api_key(
    conn: Connection,
    agent_id: int,
    mode: ApiKeyMode = ApiKeyMode.LIVE,
    *,
    rate_limit_per_s: int | None = None,
) -> tuple[int, str, str]:
    """Create a key; returns (id, key, prefix). The key is shown once: only its hash is kept."""
    if not await conn.fetchval("SELECT 1 FROM agents WHERE id = $1", agent_id):
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent_id}.")
    key = new_api_key(mode)
    prefix = key[: len(f"kami_{mode.value}_") + 6]
    key_id: int = await conn.fetchval(
        "INSERT INTO api_keys (agent_id, mode, prefix, secret_hash, rate_limit_per_s) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id",
        agent_id,
        mode.value,
        prefix,
        hash_secret(key),
        rate_limit_per_s,
    )
    if mode is ApiKeyMode.TEST:
        # A test key spends the sandbox balance; it exists (at 0) from the key's creation,
        # so a free test product needs no test deposit first.
        await ensure_account(
            conn,
            agent_account_code(agent_id, "test"),
            AccountKind.LIABILITY,
            agent_id=agent_id,
            mode="test",
        )
    return key_id, key, prefix
