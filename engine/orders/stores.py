"""Sub-stores: an agent's own storefront — a slug, a title and its retail prices.

A store sells at its retail price (or the product price where it sets none) and never
below what its agent pays for the key (engine.distribution.levels.agent_unit_cost).
The difference is the agent's margin, credited to its balance when an order is paid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.distribution.levels import agent_unit_cost
from engine.distribution.service import DistributionError, get_agent
from engine.errors import DomainError
from engine.orders.errors import OrderError
from engine.storage.db import Connection, Executor


@dataclass(frozen=True)
class StoreItem:
    sku: str
    name: str
    price: int
    currency: str


@dataclass(frozen=True)
class Store:
    agent_id: int
    slug: str
    title: str
    items: list[StoreItem]


async def set_store(
    conn: Connection, agent_id: int, *, slug: str, title: str, prices: Mapping[str, int]
) -> Store:
    """Give an agent its store (or replace it): slug, title and retail prices by SKU."""
    await get_agent(conn, agent_id)
    taken = await conn.fetchval(
        "SELECT id FROM agents WHERE store_slug = $1 AND id <> $2", slug, agent_id
    )
    if taken is not None:
        raise DomainError(OrderError.STORE_SLUG_TAKEN, f"The store slug {slug} is taken.")
    rows = await conn.fetch(
        "SELECT id, sku FROM products WHERE sku = ANY($1::text[])", list(prices)
    )
    found = {r["sku"]: r for r in rows}
    missing = sorted(set(prices) - found.keys())
    if missing:
        raise DomainError(
            DistributionError.UNKNOWN_SKU, f"No product with SKU {', '.join(missing[:10])}."
        )
    below = {}
    for sku, price in prices.items():
        # Its cost for a single unit (its highest: tiers only lower it), a parent's price
        # for it included.
        cost = await agent_unit_cost(conn, agent_id, sku, 1)
        if price < cost:
            below[sku] = cost
    if below:
        raise DomainError(
            OrderError.PRICE_BELOW_COST,
            "A store price is below what the agent pays for the key.",
            costs=below,
        )
    await conn.execute(
        "UPDATE agents SET store_slug = $2, store_title = $3 WHERE id = $1", agent_id, slug, title
    )
    await conn.execute("DELETE FROM store_prices WHERE agent_id = $1", agent_id)
    await conn.execute(
        "INSERT INTO store_prices (agent_id, product_id, price) "
        "SELECT $1, p, c FROM unnest($2::bigint[], $3::bigint[]) AS u(p, c)",
        agent_id,
        [found[sku]["id"] for sku in prices],
        list(prices.values()),
    )
    store = await get_store(conn, slug)
    assert store is not None
    return store


async def get_store(conn: Executor, slug: str) -> Store | None:
    """The store and what it sells: the products its agent's level may see, at its prices."""
    agent = await conn.fetchrow(
        "SELECT a.id, a.store_slug, a.store_title, l.visible_skus FROM agents a "
        "JOIN agent_levels l ON l.id = a.level_id WHERE a.store_slug = $1 AND a.status = 'active'",
        slug,
    )
    if agent is None:
        return None
    rows = await conn.fetch(
        "SELECT p.sku, p.name, coalesce(s.price, p.price) AS price, p.currency FROM products p "
        "LEFT JOIN store_prices s ON s.product_id = p.id AND s.agent_id = $1 "
        "WHERE p.status = 'active' AND ($2::text[] IS NULL OR p.sku = ANY($2::text[])) "
        "ORDER BY p.sku",
        agent["id"],
        agent["visible_skus"],
    )
    return Store(
        agent_id=agent["id"],
        slug=agent["store_slug"],
        title=agent["store_title"] or "",
        items=[StoreItem(**dict(r)) for r in rows],
    )
