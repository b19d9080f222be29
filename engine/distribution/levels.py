"""Agent levels in depth: their prices (absolute, discount, tiers), the price floors, and
what an agent pays for a SKU (`agent_unit_cost`, the one resolution every path uses).

Floors: no price a level configures — an absolute price, the discounted retail price, a
tier — may be below the platform's cost basis for the SKU (engine.pricing.store). That is
checked when the level is created or changed (`price_below_cost_basis`) and again at sale
time, because a later batch can raise the basis (the issuance path refuses; the order path
refuses through the same check before the split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import asyncpg

from engine.distribution.service import DistributionError
from engine.errors import DomainError
from engine.issuance.terms import TermsCache, below_cost_basis
from engine.pricing import (
    PriceSource,
    PricingError,
    Quote,
    Tier,
    lowest_price,
    quote,
    validate_tiers,
)
from engine.pricing.store import LEVEL_JOINS, TERMS_COLUMNS, agents_pricing, pricing_from
from engine.storage.db import Connection, Executor


class LevelError(StrEnum):
    INVALID_UPGRADE_RULE = "invalid_upgrade_rule"
    AUTO_DOWNGRADE_DISABLED = "auto_downgrade_disabled"


class RuleMetric(StrEnum):
    SALES = "sales"
    DEPOSITS = "deposits"


@dataclass(frozen=True)
class UpgradeRule:
    metric: RuleMetric
    threshold: int
    window_days: int
    to_level_id: int
    id: int | None = None


@dataclass(frozen=True)
class LevelDetail:
    id: int
    name: str
    rank: int
    prices: dict[str, int]
    discount_bp: int | None
    tiers: dict[str, list[Tier]]
    visible_skus: list[str] | None
    can_create_sub_agents: bool
    auto_downgrade: bool
    upgrade_rules: list[UpgradeRule]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class LevelChanges:
    """A PATCH: only the names in `fields` change; `prices`, `tiers` and `upgrade_rules`
    replace the whole collection when given."""

    fields: frozenset[str]
    name: str | None = None
    rank: int | None = None
    prices: Mapping[str, int] = field(default_factory=dict)
    discount_bp: int | None = None
    tiers: Mapping[str, Sequence[Tier]] = field(default_factory=dict)
    visible_skus: Sequence[str] | None = None
    can_create_sub_agents: bool | None = None
    auto_downgrade: bool | None = None
    upgrade_rules: Sequence[UpgradeRule] = ()


_NO_CEILING = 2**63
_LEVEL_COLUMNS = (
    "id, name, rank, visible_skus, discount_bp, can_create_sub_agents, auto_downgrade, "
    "created_at, updated_at"
)


async def _details(conn: Executor, rows: Sequence[asyncpg.Record]) -> list[LevelDetail]:
    ids = [r["id"] for r in rows]
    prices = await conn.fetch(
        "SELECT lp.level_id, p.sku, lp.price FROM agent_level_prices lp "
        "JOIN products p ON p.id = lp.product_id WHERE lp.level_id = ANY($1::bigint[]) "
        "ORDER BY p.sku",
        ids,
    )
    tiers = await conn.fetch(
        "SELECT t.level_id, p.sku, t.min_quantity, t.price FROM agent_level_tiers t "
        "JOIN products p ON p.id = t.product_id WHERE t.level_id = ANY($1::bigint[]) "
        "ORDER BY p.sku, t.min_quantity",
        ids,
    )
    rules = await conn.fetch(
        "SELECT id, level_id, metric, threshold, window_days, to_level_id "
        "FROM agent_level_rules WHERE level_id = ANY($1::bigint[]) ORDER BY id",
        ids,
    )
    details = []
    for row in rows:
        level_tiers: dict[str, list[Tier]] = {}
        for t in tiers:
            if t["level_id"] == row["id"]:
                level_tiers.setdefault(t["sku"], []).append(Tier(t["min_quantity"], t["price"]))
        details.append(
            LevelDetail(
                id=row["id"],
                name=row["name"],
                rank=row["rank"],
                prices={p["sku"]: p["price"] for p in prices if p["level_id"] == row["id"]},
                discount_bp=row["discount_bp"],
                tiers=level_tiers,
                visible_skus=row["visible_skus"],
                can_create_sub_agents=row["can_create_sub_agents"],
                auto_downgrade=row["auto_downgrade"],
                upgrade_rules=[
                    UpgradeRule(
                        id=r["id"],
                        metric=RuleMetric(r["metric"]),
                        threshold=r["threshold"],
                        window_days=r["window_days"],
                        to_level_id=r["to_level_id"],
                    )
                    for r in rules
                    if r["level_id"] == row["id"]
                ],
                created_at=row["created_at"],
                updated_at=row["updated_at"],
            )
        )
    return details


async def level_detail(conn: Executor, level_id: int) -> LevelDetail:
    row = await conn.fetchrow(
        f"SELECT {_LEVEL_COLUMNS} FROM agent_levels WHERE id = $1",  # noqa: S608
        level_id,
    )
    if row is None:
        raise DomainError(DistributionError.LEVEL_NOT_FOUND, f"No agent level {level_id}.")
    [detail] = await _details(conn, [row])
    return detail


async def list_levels(conn: Executor, *, limit: int, after_id: int | None) -> list[LevelDetail]:
    """Levels by id (creation order); `limit` rows after `after_id`."""
    rows = await conn.fetch(
        f"SELECT {_LEVEL_COLUMNS} FROM agent_levels WHERE id > $1 ORDER BY id LIMIT $2",  # noqa: S608
        after_id or 0,
        limit,
    )
    return await _details(conn, rows)


async def _product_ids(conn: Connection, skus: Sequence[str]) -> dict[str, int]:
    rows = await conn.fetch("SELECT sku, id FROM products WHERE sku = ANY($1::text[])", list(skus))
    found = {r["sku"]: r["id"] for r in rows}
    missing = sorted(set(skus) - found.keys())
    if missing:
        raise DomainError(
            DistributionError.UNKNOWN_SKU,
            f"No product with SKU {', '.join(missing[:10])}.",
            skus=missing[:100],
        )
    return found


async def update_level(conn: Connection, level_id: int, changes: LevelChanges) -> LevelDetail:
    """Apply a PATCH in the caller's transaction; every check runs on the result, so a
    refused change leaves the level as it was (the transaction rolls back)."""
    if not await conn.fetchval("SELECT 1 FROM agent_levels WHERE id = $1 FOR UPDATE", level_id):
        raise DomainError(DistributionError.LEVEL_NOT_FOUND, f"No agent level {level_id}.")
    given = changes.fields
    skus = [
        *(changes.prices if "prices" in given else ()),
        *(changes.tiers if "tiers" in given else ()),
        *((changes.visible_skus or ()) if "visible_skus" in given else ()),
    ]
    product_ids = await _product_ids(conn, skus)

    columns = ["name", "rank", "discount_bp", "can_create_sub_agents", "auto_downgrade"]
    updates = [(c, getattr(changes, c)) for c in columns if c in given]
    if "visible_skus" in given:
        visible = changes.visible_skus
        updates.append(("visible_skus", list(visible) if visible is not None else None))
    for column, value in updates:
        await conn.execute(
            f"UPDATE agent_levels SET {column} = $2 WHERE id = $1",  # noqa: S608 (a constant column)
            level_id,
            value,
        )
    await conn.execute("UPDATE agent_levels SET updated_at = now() WHERE id = $1", level_id)

    if "prices" in given:
        await conn.execute("DELETE FROM agent_level_prices WHERE level_id = $1", level_id)
        await conn.executemany(
            "INSERT INTO agent_level_prices (level_id, product_id, price) VALUES ($1, $2, $3)",
            [(level_id, product_ids[sku], price) for sku, price in changes.prices.items()],
        )
    if "tiers" in given:
        # In the order given (the table's key would sort it and hide a mistake); against
        # the base price once everything is applied, in check_level.
        for sku, tiers in changes.tiers.items():
            validate_tiers(tiers, _NO_CEILING, sku=sku)
        await conn.execute("DELETE FROM agent_level_tiers WHERE level_id = $1", level_id)
        await conn.executemany(
            "INSERT INTO agent_level_tiers (level_id, product_id, min_quantity, price) "
            "VALUES ($1, $2, $3, $4)",
            [
                (level_id, product_ids[sku], tier.min_quantity, tier.unit_price)
                for sku, tiers in changes.tiers.items()
                for tier in tiers
            ],
        )
    if "upgrade_rules" in given:
        await _replace_rules(conn, level_id, changes.upgrade_rules)
    await check_level(conn, level_id)
    return await level_detail(conn, level_id)


async def _replace_rules(conn: Connection, level_id: int, rules: Sequence[UpgradeRule]) -> None:
    targets = {r.to_level_id for r in rules}
    if level_id in targets:
        raise DomainError(
            LevelError.INVALID_UPGRADE_RULE, "A rule moves an agent to another level."
        )
    found = await conn.fetch(
        "SELECT id FROM agent_levels WHERE id = ANY($1::bigint[])", list(targets)
    )
    missing = sorted(targets - {r["id"] for r in found})
    if missing:
        raise DomainError(DistributionError.LEVEL_NOT_FOUND, f"No agent level {missing[0]}.")
    await conn.execute("DELETE FROM agent_level_rules WHERE level_id = $1", level_id)
    if not rules:
        return
    await conn.executemany(
        "INSERT INTO agent_level_rules (level_id, metric, threshold, window_days, to_level_id) "
        "VALUES ($1, $2, $3, $4, $5)",
        [(level_id, r.metric.value, r.threshold, r.window_days, r.to_level_id) for r in rules],
    )


async def check_level(conn: Connection, level_id: int) -> None:
    """Every rule of a level as it now stands: tiers in order, prices above the cost basis,
    upgrade rules that point somewhere sensible."""
    level = await conn.fetchrow(
        "SELECT rank, auto_downgrade FROM agent_levels WHERE id = $1", level_id
    )
    assert level is not None
    rows = await conn.fetch(
        f"SELECT {TERMS_COLUMNS} FROM agent_levels l CROSS JOIN products p {LEVEL_JOINS} "  # noqa: S608 (constant fragments)
        "WHERE l.id = $1 AND (lp.price IS NOT NULL OR l.discount_bp IS NOT NULL "
        "OR t.quantities IS NOT NULL) ORDER BY p.sku",
        level_id,
    )
    below: list[str] = []
    for row in rows:
        pricing = pricing_from(row)
        validate_tiers(pricing.tiers, pricing.base_price, sku=row["sku"])
        # Without a price of its own for the SKU the level sells at retail, which is the
        # product's price, not the level's; only its tiers are then its own.
        own = [t.unit_price for t in pricing.tiers]
        if pricing.source is not PriceSource.RETAIL:
            own.append(lowest_price(pricing))
        if own and min(own) < pricing.cost_basis:
            below.append(row["sku"])
    if below:
        raise DomainError(
            PricingError.PRICE_BELOW_COST_BASIS,
            f"A price of this level is below the platform's cost basis for "
            f"{', '.join(below[:10])}.",
            skus=below[:100],
        )
    rules = await conn.fetch(
        "SELECT r.to_level_id, t.rank FROM agent_level_rules r "
        "LEFT JOIN agent_levels t ON t.id = r.to_level_id WHERE r.level_id = $1",
        level_id,
    )
    for rule in rules:
        if rule["rank"] is None:
            raise DomainError(
                DistributionError.LEVEL_NOT_FOUND, f"No agent level {rule['to_level_id']}."
            )
        if rule["rank"] == level["rank"]:
            raise DomainError(
                LevelError.INVALID_UPGRADE_RULE,
                f"Level {rule['to_level_id']} has this level's rank: a rule moves an agent "
                "to a higher rank (upgrade) or a lower one (downgrade).",
            )
        if rule["rank"] < level["rank"] and not level["auto_downgrade"]:
            raise DomainError(
                LevelError.AUTO_DOWNGRADE_DISABLED,
                f"Level {rule['to_level_id']} ranks lower: a downgrade rule needs "
                "auto_downgrade on this level.",
            )


# --- what an agent pays ----------------------------------------------------------------


@dataclass(frozen=True)
class CachedPricing:
    """The hot path's source of prices: the per-worker terms cache and its pool. Its
    answers apply the rules of a sale by that agent (visibility, status, cost floor)."""

    cache: TermsCache
    db: asyncpg.Pool
    level_id: int


async def agent_quotes(
    conn: Executor, agent_ids: Sequence[int], sku: str, quantity: int
) -> dict[int, Quote]:
    """Each agent's quote for `quantity` units of `sku` (its level's price and tiers, then
    its parent's price for it), in one query. Visibility is not checked: an ancestor's
    cost counts in a descendant's sale whatever the ancestor itself may buy."""
    found = await agents_pricing(conn, agent_ids, sku)
    missing = [a for a in agent_ids if a not in found]
    if missing:
        known = await conn.fetchval("SELECT 1 FROM products WHERE sku = $1", sku)
        if not known:
            raise DomainError(DistributionError.UNKNOWN_SKU, f"No product with SKU {sku}.")
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {missing[0]}.")
    return {
        agent_id: quote(p.pricing, quantity, parent_price=p.parent_price)
        for agent_id, p in found.items()
    }


async def agent_unit_cost(
    conn_or_cache: Executor | CachedPricing, agent_id: int, sku: str, quantity: int
) -> int:
    """What `agent_id` pays per unit for `quantity` units of `sku`: the cost each agent on
    a sale's path pays, from which the differential commissions follow."""
    if isinstance(conn_or_cache, CachedPricing):
        _, found = await conn_or_cache.cache.price(
            conn_or_cache.db, conn_or_cache.level_id, agent_id, sku, quantity
        )
        if not found.covers_cost_basis:
            raise below_cost_basis(sku)
        return found.unit_price
    quotes = await agent_quotes(conn_or_cache, [agent_id], sku, quantity)
    return quotes[agent_id].unit_price


def check_sale_floor(quotes: Mapping[int, Quote], sku: str) -> None:
    """Refuse a sale when any price on its path is below the cost basis now."""
    if any(not q.covers_cost_basis for q in quotes.values()):
        raise DomainError(
            PricingError.PRICE_BELOW_COST_BASIS,
            f"{sku} cannot be sold at this price now: it is below the platform's cost.",
        )


# --- an agent's price list ---------------------------------------------------------------


@dataclass(frozen=True)
class PriceListItem:
    sku: str
    name: str
    currency: str
    retail_price: int
    unit_price: int
    source: str
    tiers: list[Tier]
    on_sale: bool


async def price_list(
    conn: Executor,
    agent_id: int,
    *,
    limit: int,
    after_sku: str | None,
    skus: Sequence[str] | None = None,
) -> list[PriceListItem]:
    """The SKUs an agent may buy, at its prices: its level's, with its tiers, raised to its
    parent's price where one is set. By SKU, `limit` after `after_sku`; only `skus` if given."""
    rows = await conn.fetch(
        f"SELECT {TERMS_COLUMNS}, o.price AS parent_price "  # noqa: S608 (constant fragments)
        "FROM agents a JOIN agent_levels l ON l.id = a.level_id CROSS JOIN products p "
        f"{LEVEL_JOINS} "
        "LEFT JOIN agent_price_overrides o ON o.agent_id = a.id AND o.product_id = p.id "
        "WHERE a.id = $1 AND p.status = 'active' "
        "AND (l.visible_skus IS NULL OR p.sku = ANY(l.visible_skus)) "
        "AND ($2::text IS NULL OR p.sku > $2) AND ($4::text[] IS NULL OR p.sku = ANY($4)) "
        "ORDER BY p.sku LIMIT $3",
        agent_id,
        after_sku,
        limit,
        list(skus) if skus is not None else None,
    )
    items = []
    for row in rows:
        pricing = pricing_from(row)
        one = quote(pricing, 1, parent_price=row["parent_price"])
        tiers = []
        for tier in pricing.tiers:
            at = quote(pricing, tier.min_quantity, parent_price=row["parent_price"])
            # A parent's price can cancel a tier: show only the tiers that still lower it.
            if at.tier is not None and not at.parent_price_applied:
                tiers.append(Tier(tier.min_quantity, at.unit_price))
        items.append(
            PriceListItem(
                sku=row["sku"],
                name=row["name"],
                currency=row["currency"],
                retail_price=pricing.retail_price,
                unit_price=one.unit_price,
                source="parent_price" if one.parent_price_applied else one.source.value,
                tiers=tiers,
                on_sale=one.covers_cost_basis,
            )
        )
    return items
