"""Reading pricing terms from PostgreSQL: one statement per lookup, tiers and cost basis
included, so the terms cache (engine.issuance.terms) pays a single query per (level, SKU).

The platform's cost basis for a product is the highest `unit_cost` of its batches that
loaded keys (`accepted > 0`). The pool does not say which batch a key will come from
before it is taken, so a level price must cover the dearest stock it may sell; a later,
dearer batch raises the floor at once (sales below it are refused), a cheaper one does
not lower it while a dearer batch exists. Per-batch remaining stock is not used: counting
it would put a scan of the issued keys on every cache refresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from engine.pricing import SkuPricing, Tier
from engine.storage.db import Executor

COST_BASIS_SQL = (
    "coalesce((SELECT max(b.unit_cost) FROM batches b "
    "WHERE b.product_id = p.id AND b.accepted > 0), 0)"
)

# Columns of a (level l, product p) pair; needs the FROM of `LEVEL_JOINS`.
TERMS_COLUMNS = (
    "p.id AS product_id, p.sku, p.name, p.price AS retail_price, p.currency, p.status, "
    "l.id AS level_id, l.visible_skus, l.discount_bp, lp.price AS level_price, "
    f"{COST_BASIS_SQL} AS cost_basis, t.quantities AS tier_quantities, t.prices AS tier_prices"
)
LEVEL_JOINS = (
    "LEFT JOIN agent_level_prices lp ON lp.level_id = l.id AND lp.product_id = p.id "
    "LEFT JOIN LATERAL (SELECT array_agg(min_quantity ORDER BY min_quantity) AS quantities, "
    "array_agg(price ORDER BY min_quantity) AS prices FROM agent_level_tiers "
    "WHERE level_id = l.id AND product_id = p.id) t ON true"
)


def pricing_from(row: asyncpg.Record) -> SkuPricing:
    quantities = row["tier_quantities"] or []
    prices = row["tier_prices"] or []
    return SkuPricing(
        retail_price=row["retail_price"],
        level_price=row["level_price"],
        discount_bp=row["discount_bp"],
        tiers=tuple(Tier(q, p) for q, p in zip(quantities, prices, strict=True)),
        cost_basis=row["cost_basis"],
    )


async def level_terms_row(db: Executor, level_id: int, sku: str) -> asyncpg.Record | None:
    """A level's terms for a SKU, and whether any agent of the level has a parent's price
    for it (so agents without one need no second lookup)."""
    return await db.fetchrow(
        f"SELECT {TERMS_COLUMNS}, EXISTS (SELECT 1 FROM agent_price_overrides o "  # noqa: S608 (constant fragments)
        "JOIN agents a ON a.id = o.agent_id WHERE o.product_id = p.id AND a.level_id = l.id) "
        f"AS has_overrides FROM products p CROSS JOIN agent_levels l {LEVEL_JOINS} "
        "WHERE p.sku = $1 AND l.id = $2",
        sku,
        level_id,
    )


async def parent_price(db: Executor, agent_id: int, product_id: int) -> int | None:
    price: int | None = await db.fetchval(
        "SELECT price FROM agent_price_overrides WHERE agent_id = $1 AND product_id = $2",
        agent_id,
        product_id,
    )
    return price


@dataclass(frozen=True)
class AgentPricing:
    agent_id: int
    level_id: int
    product_id: int
    pricing: SkuPricing
    parent_price: int | None


async def agents_pricing(
    db: Executor, agent_ids: Sequence[int], sku: str
) -> dict[int, AgentPricing]:
    """Each agent's terms for a SKU (level, tiers, its parent's price), in one query."""
    rows = await db.fetch(
        f"SELECT a.id AS agent_id, o.price AS parent_price, {TERMS_COLUMNS} "  # noqa: S608 (constant fragments)
        "FROM agents a JOIN agent_levels l ON l.id = a.level_id CROSS JOIN products p "
        f"{LEVEL_JOINS} "
        "LEFT JOIN agent_price_overrides o ON o.agent_id = a.id AND o.product_id = p.id "
        "WHERE a.id = ANY($1::bigint[]) AND p.sku = $2",
        list(agent_ids),
        sku,
    )
    return {
        r["agent_id"]: AgentPricing(
            agent_id=r["agent_id"],
            level_id=r["level_id"],
            product_id=r["product_id"],
            pricing=pricing_from(r),
            parent_price=r["parent_price"],
        )
        for r in rows
    }


async def cost_basis(db: Executor, product_id: int) -> int:
    value: int = await db.fetchval(
        f"SELECT {COST_BASIS_SQL} FROM products p WHERE p.id = $1",  # noqa: S608
        product_id,
    )
    return value
