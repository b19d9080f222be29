"""Sub-stores: an agent's own storefront — slug, title, contact, markup and retail prices.

What a store sells a SKU at (`retail_price`): its absolute price for the SKU if it set
one, else the agent's own cost plus the store's markup (a rate in basis points, rounded
up to the fen, or a fixed amount per unit), else — no markup configured — the product's
list price. An absolute price is refused below the agent's cost when it is set; at order
time the sale's split (`split_sale`) is the final check for every price. The difference
between the retail price and the agent's cost is the agent's margin, credited to its
balance when an order is paid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from engine.distribution.levels import agent_unit_cost, price_list
from engine.distribution.service import DistributionError, get_agent
from engine.errors import DomainError
from engine.orders.errors import OrderError
from engine.storage.db import Connection, Executor

BP = 10_000


@dataclass(frozen=True)
class Markup:
    """A store-wide markup over the agent's cost: exactly one of the two is set."""

    rate_bp: int | None = None
    per_unit: int | None = None

    def __post_init__(self) -> None:
        if (self.rate_bp is None) == (self.per_unit is None):
            raise ValueError("a markup is a rate or a fixed amount, exactly one")

    def apply(self, cost: int) -> int:
        if self.per_unit is not None:
            return cost + self.per_unit
        assert self.rate_bp is not None
        # Rounded up: the agent's margin is never less than the rate it asked for.
        return cost + -(-cost * self.rate_bp // BP)

    def as_dict(self) -> dict[str, int]:
        return (
            {"rate_bp": self.rate_bp}
            if self.rate_bp is not None
            else {"per_unit": self.per_unit or 0}
        )


def retail_price(
    *, store_price: int | None, markup: Markup | None, cost: int, list_price: int
) -> int:
    """The unit price a store sells at (see the module's docstring)."""
    if store_price is not None:
        return store_price
    if markup is not None:
        return markup.apply(cost)
    return list_price


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
    contact: dict[str, str] = field(default_factory=dict)
    markup: Markup | None = None
    # The store's absolute prices by SKU (its settings; `items` are what it sells at).
    prices: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreSettings:
    slug: str
    title: str
    contact: Mapping[str, str]
    markup: Markup | None
    prices: Mapping[str, int]


def markup_of(row: asyncpg.Record) -> Markup | None:
    bp, amount = row["store_markup_bp"], row["store_markup_amount"]
    if bp is None and amount is None:
        return None
    return Markup(rate_bp=bp, per_unit=amount)


async def _current(conn: Connection, agent_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT store_slug, store_title, store_contact, store_markup_bp, store_markup_amount "
        "FROM agents WHERE id = $1",
        agent_id,
    )
    if row is None or row["store_slug"] is None:
        return None
    prices = await conn.fetch(
        "SELECT p.sku, s.price FROM store_prices s JOIN products p ON p.id = s.product_id "
        "WHERE s.agent_id = $1",
        agent_id,
    )
    markup = markup_of(row)
    return {
        "slug": row["store_slug"],
        "title": row["store_title"] or "",
        "contact": orjson.loads(row["store_contact"]),
        "markup": markup.as_dict() if markup is not None else None,
        "prices": {r["sku"]: r["price"] for r in prices},
    }


def _changes(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """What a store write changed, field by field (prices SKU by SKU), for the audit log."""
    old = before or {"slug": None, "title": None, "contact": {}, "markup": None, "prices": {}}
    changed: dict[str, Any] = {}
    for name in ("slug", "title", "contact", "markup"):
        if old[name] != after[name]:
            changed[name] = {"from": old[name], "to": after[name]}
    prices = {
        sku: {"from": old["prices"].get(sku), "to": after["prices"].get(sku)}
        for sku in sorted(old["prices"].keys() | after["prices"].keys())
        if old["prices"].get(sku) != after["prices"].get(sku)
    }
    if prices:
        changed["prices"] = prices
    return changed


async def set_store(
    conn: Connection,
    agent_id: int,
    *,
    slug: str,
    title: str,
    prices: Mapping[str, int],
    contact: Mapping[str, str] | None = None,
    markup: Markup | None = None,
    visible_only: bool = False,
) -> tuple[Store, dict[str, Any]]:
    """Give an agent its store (or replace it); returns the store and what changed.
    `visible_only`: a SKU the agent's level may not see is unknown (the agent's own
    writes: it must not learn which products exist beyond its range)."""
    await get_agent(conn, agent_id)
    # Concurrent writes to one store are serialised, so each audit diff is against the
    # state it replaced.
    level = await conn.fetchrow(
        "SELECT l.visible_skus FROM agents a JOIN agent_levels l ON l.id = a.level_id "
        "WHERE a.id = $1 FOR UPDATE OF a",
        agent_id,
    )
    assert level is not None
    before = await _current(conn, agent_id)
    taken = await conn.fetchval(
        "SELECT id FROM agents WHERE store_slug = $1 AND id <> $2", slug, agent_id
    )
    if taken is not None:
        raise _slug_taken(slug)
    rows = await conn.fetch(
        "SELECT id, sku FROM products WHERE sku = ANY($1::text[])", list(prices)
    )
    visible = level["visible_skus"]
    found = {
        r["sku"]: r for r in rows if not visible_only or visible is None or r["sku"] in visible
    }
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
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE agents SET store_slug = $2, store_title = $3, store_contact = $4::jsonb, "
                "store_markup_bp = $5, store_markup_amount = $6 WHERE id = $1",
                agent_id,
                slug,
                title,
                orjson.dumps(dict(contact or {})).decode(),
                markup.rate_bp if markup is not None else None,
                markup.per_unit if markup is not None else None,
            )
    except asyncpg.UniqueViolationError:
        # Another agent took the slug in a concurrent transaction.
        raise _slug_taken(slug) from None
    await conn.execute("DELETE FROM store_prices WHERE agent_id = $1", agent_id)
    await conn.execute(
        "INSERT INTO store_prices (agent_id, product_id, price) "
        "SELECT $1, p, c FROM unnest($2::bigint[], $3::bigint[]) AS u(p, c)",
        agent_id,
        [found[sku]["id"] for sku in prices],
        list(prices.values()),
    )
    after = await _current(conn, agent_id)
    assert after is not None
    store = await get_store(conn, slug)
    assert store is not None
    return store, _changes(before, after)


async def agent_store(conn: Executor, agent_id: int) -> Store | None:
    """The agent's store with its settings (its owner's and operators' view)."""
    slug: str | None = await conn.fetchval("SELECT store_slug FROM agents WHERE id = $1", agent_id)
    return await get_store(conn, slug) if slug is not None else None


async def get_store(conn: Executor, slug: str) -> Store | None:
    """The store and what it sells: the products its agent's level may see, at its prices."""
    agent = await conn.fetchrow(
        "SELECT a.id, a.store_slug, a.store_title, a.store_contact, a.store_markup_bp, "
        "a.store_markup_amount, l.visible_skus FROM agents a "
        "JOIN agent_levels l ON l.id = a.level_id WHERE a.store_slug = $1 AND a.status = 'active'",
        slug,
    )
    if agent is None:
        return None
    rows = await conn.fetch(
        "SELECT p.sku, p.name, p.price AS list_price, s.price AS store_price, p.currency "
        "FROM products p LEFT JOIN store_prices s ON s.product_id = p.id AND s.agent_id = $1 "
        "WHERE p.status = 'active' AND ($2::text[] IS NULL OR p.sku = ANY($2::text[])) "
        "ORDER BY p.sku",
        agent["id"],
        agent["visible_skus"],
    )
    markup = markup_of(agent)
    costs: dict[str, int] = {}
    marked_up = [r["sku"] for r in rows if r["store_price"] is None]
    if markup is not None and marked_up:
        # One query for every SKU priced by the markup; shown at a single unit's cost.
        listed = await price_list(
            conn, agent["id"], limit=len(marked_up), after_sku=None, skus=marked_up
        )
        costs = {item.sku: item.unit_price for item in listed}
    items = [
        StoreItem(
            sku=r["sku"],
            name=r["name"],
            price=retail_price(
                store_price=r["store_price"],
                markup=markup,
                cost=costs.get(r["sku"], 0),
                list_price=r["list_price"],
            ),
            currency=r["currency"],
        )
        for r in rows
        if r["store_price"] is not None or markup is None or r["sku"] in costs
    ]
    return Store(
        agent_id=agent["id"],
        slug=agent["store_slug"],
        title=agent["store_title"] or "",
        items=items,
        contact=orjson.loads(agent["store_contact"]),
        markup=markup,
        prices={r["sku"]: r["store_price"] for r in rows if r["store_price"] is not None},
    )


def _slug_taken(slug: str) -> DomainError:
    return DomainError(OrderError.STORE_SLUG_TAKEN, f"The store slug {slug} is taken.")
