"""Agents that create their own sub-agents and set what those pay (agent-facing).

An agent whose level allows it (`can_create_sub_agents`) creates children at strictly
lower-ranked levels, within the tree's depth limit, and sets a price per SKU for each
child at or above its own cost (`price_below_cost` otherwise) and the platform's cost
basis. The child then pays max(its level's price, that price): its parent's margin on
the child's purchases is the differential commission of engine.distribution.commissions.
A child's credit limit is the platform's to give, so children start at 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from engine.distribution.levels import agent_quotes
from engine.distribution.service import (
    Agent,
    DistributionError,
    create_agent,
    create_api_key,
    get_agent,
)
from engine.errors import DomainError
from engine.pricing import PricingError
from engine.pricing.store import cost_basis
from engine.storage.db import Connection, Executor


class SubAgentError(StrEnum):
    SUB_AGENTS_NOT_ALLOWED = "sub_agents_not_allowed"
    LEVEL_NOT_BELOW_PARENT = "level_not_below_parent"
    PRICE_BELOW_COST = "price_below_cost"


@dataclass(frozen=True)
class SubAgent:
    agent: Agent
    prices: dict[str, int]


@dataclass(frozen=True)
class CreatedSubAgent:
    sub_agent: SubAgent
    api_key_id: int
    api_key: str
    api_key_prefix: str


async def create_sub_agent(
    conn: Connection,
    parent_id: int,
    *,
    name: str,
    level_id: int,
    prices: Mapping[str, int],
    max_depth: int,
) -> CreatedSubAgent:
    """A child of `parent_id` with its prices and an API key (shown once), in the caller's
    transaction."""
    parent = await conn.fetchrow(
        "SELECT l.rank, l.can_create_sub_agents FROM agents a "
        "JOIN agent_levels l ON l.id = a.level_id WHERE a.id = $1 FOR UPDATE OF a",
        parent_id,
    )
    if parent is None:
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {parent_id}.")
    if not parent["can_create_sub_agents"]:
        raise DomainError(
            SubAgentError.SUB_AGENTS_NOT_ALLOWED, "Your agent level cannot create sub-agents."
        )
    rank = await conn.fetchval("SELECT rank FROM agent_levels WHERE id = $1", level_id)
    if rank is None:
        raise DomainError(DistributionError.LEVEL_NOT_FOUND, f"No agent level {level_id}.")
    if rank >= parent["rank"]:
        raise DomainError(
            SubAgentError.LEVEL_NOT_BELOW_PARENT,
            "A sub-agent's level must rank strictly below your own.",
        )
    agent = await create_agent(
        conn, name=name, level_id=level_id, parent_id=parent_id, max_depth=max_depth
    )
    child = await set_child_prices(conn, parent_id, agent.id, prices)
    key_id, key, prefix = await create_api_key(conn, agent.id)
    return CreatedSubAgent(child, key_id, key, prefix)


async def set_child_prices(
    conn: Connection, parent_id: int, child_id: int, prices: Mapping[str, int]
) -> SubAgent:
    """Replace what `child_id` pays its parent per SKU. Someone else's child is
    `agent_not_found`, as if it did not exist."""
    child = await conn.fetchrow(
        "SELECT id FROM agents WHERE id = $1 AND parent_id = $2 FOR UPDATE", child_id, parent_id
    )
    if child is None:
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No sub-agent {child_id}.")
    rows = await conn.fetch(
        "SELECT sku, id FROM products WHERE sku = ANY($1::text[])", list(prices)
    )
    product_ids = {r["sku"]: r["id"] for r in rows}
    missing = sorted(set(prices) - product_ids.keys())
    if missing:
        raise DomainError(
            DistributionError.UNKNOWN_SKU, f"No product with SKU {', '.join(missing[:10])}."
        )
    below_cost: dict[str, int] = {}
    below_basis: list[str] = []
    for sku, price in prices.items():
        # Its own cost for one unit, its highest: the child's price covers it at any
        # quantity the parent itself might buy.
        own = (await agent_quotes(conn, [parent_id], sku, 1))[parent_id]
        if price < own.unit_price:
            below_cost[sku] = own.unit_price
        elif price < await cost_basis(conn, product_ids[sku]):
            below_basis.append(sku)
    if below_cost:
        raise DomainError(
            SubAgentError.PRICE_BELOW_COST,
            "A sub-agent's price is below what you pay for the SKU.",
            costs=below_cost,
        )
    if below_basis:
        raise DomainError(
            PricingError.PRICE_BELOW_COST_BASIS,
            f"A sub-agent's price is below the platform's cost for {', '.join(below_basis)}.",
            skus=below_basis,
        )
    await conn.execute("DELETE FROM agent_price_overrides WHERE agent_id = $1", child_id)
    await conn.execute(
        "INSERT INTO agent_price_overrides (agent_id, product_id, price) "
        "SELECT $1, p, c FROM unnest($2::bigint[], $3::bigint[]) AS u(p, c)",
        child_id,
        [product_ids[sku] for sku in prices],
        list(prices.values()),
    )
    return await get_sub_agent(conn, parent_id, child_id)


async def get_sub_agent(conn: Executor, parent_id: int, child_id: int) -> SubAgent:
    if not await conn.fetchval(
        "SELECT 1 FROM agents WHERE id = $1 AND parent_id = $2", child_id, parent_id
    ):
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No sub-agent {child_id}.")
    [found] = await _with_prices(conn, [await get_agent(conn, child_id)])
    return found


async def list_sub_agents(
    conn: Executor, parent_id: int, *, limit: int, after_id: int | None
) -> list[SubAgent]:
    ids = await conn.fetch(
        "SELECT id FROM agents WHERE parent_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        parent_id,
        after_id or 0,
        limit,
    )
    return await _with_prices(conn, [await get_agent(conn, r["id"]) for r in ids])


async def _with_prices(conn: Executor, agents: list[Agent]) -> list[SubAgent]:
    rows = await conn.fetch(
        "SELECT o.agent_id, p.sku, o.price FROM agent_price_overrides o "
        "JOIN products p ON p.id = o.product_id WHERE o.agent_id = ANY($1::bigint[]) "
        "ORDER BY p.sku",
        [a.id for a in agents],
    )
    return [
        SubAgent(a, {r["sku"]: r["price"] for r in rows if r["agent_id"] == a.id}) for a in agents
    ]
