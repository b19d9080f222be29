"""Promoters (推广员): agents paid a commission on the orders their link code brings.

A promoter is an agent — it has a balance the commission is credited to and an API key to
read its own earnings — with a row in `promoters`: its link code and its commission, a
rate in basis points of the sale or a fixed amount per unit (exactly one). It holds no
stock. The commission is part of the order's split (`commissions.split_sale`), fixed when
the order is placed, credited when it is paid and reversed by a refund, with the rest of
the split (engine.orders.service). A promoter scoped to a store (`store_agent_id`) counts
only on that store's orders: the store pays the commission out of its margin, so nobody
else's margin can be charged for a link it never agreed to.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from engine.distribution import cursors
from engine.distribution.commissions import CommissionError
from engine.distribution.commissions import Promoter as PromoterTerms
from engine.distribution.service import DistributionError
from engine.errors import DomainError
from engine.storage.db import Connection, Executor


class PromoterError(StrEnum):
    PROMOTER_NOT_FOUND = "promoter_not_found"
    PROMOTER_EXISTS = "promoter_exists"
    PROMOTER_CODE_TAKEN = "promoter_code_taken"
    PROMOTER_NOT_FOR_STORE = "promoter_not_for_store"


@dataclass(frozen=True)
class Promoter:
    agent_id: int
    code: str
    rate_bp: int | None
    per_unit: int | None
    store_agent_id: int | None
    status: str
    created_at: datetime

    @property
    def terms(self) -> PromoterTerms:
        # The promoter's party in a split is its agent id, so its share is credited to
        # that agent's balance like any other share.
        return PromoterTerms(self.agent_id, rate_bp=self.rate_bp, per_unit=self.per_unit)


@dataclass(frozen=True)
class Earnings:
    """Commission by the state of the orders it came from (minor units)."""

    earned: int  # delivered orders: credited to the promoter's balance
    pending: int  # unpaid orders that may still pay
    reversed: int  # refunded orders: credited, then taken back
    orders: int  # every attributed order


@dataclass(frozen=True)
class AttributedOrder:
    order_no: str
    status: str
    sku: str
    quantity: int
    amount: int
    currency: str
    commission: int
    store_agent_id: int | None
    mode: str
    created_at: datetime


_COLUMNS = "agent_id, code, rate_bp, per_unit, store_agent_id, status, created_at"


async def create_promoter(
    conn: Connection,
    *,
    agent_id: int,
    code: str | None,
    rate_bp: int | None,
    per_unit: int | None,
    store_agent_id: int | None,
) -> Promoter:
    # The check split_sale makes at sale time, now, so a bad rule is never stored.
    _validate_terms(agent_id, rate_bp, per_unit)
    for agent in {agent_id, store_agent_id} - {None}:
        if not await conn.fetchval("SELECT 1 FROM agents WHERE id = $1", agent):
            raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent}.")
    if await conn.fetchval("SELECT 1 FROM promoters WHERE agent_id = $1", agent_id):
        raise DomainError(PromoterError.PROMOTER_EXISTS, f"Agent {agent_id} is a promoter already.")
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO promoters (agent_id, code, rate_bp, per_unit, store_agent_id) "  # noqa: S608
                f"VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
                agent_id,
                code or _new_code(),
                rate_bp,
                per_unit,
                store_agent_id,
            )
    except asyncpg.UniqueViolationError:
        raise DomainError(
            PromoterError.PROMOTER_CODE_TAKEN, "This promoter code is taken; choose another."
        ) from None
    assert row is not None
    return Promoter(**dict(row))


async def update_promoter(
    conn: Connection,
    agent_id: int,
    *,
    status: str | None = None,
    rate_bp: int | None = None,
    per_unit: int | None = None,
) -> Promoter:
    """Suspend or resume a promoter, or change its commission (one of rate or per unit,
    replacing the other). Orders placed already keep the split they were placed with."""
    current = await get_promoter(conn, agent_id)
    if rate_bp is not None and per_unit is not None:
        _validate_terms(agent_id, rate_bp, per_unit)
    if rate_bp is None and per_unit is None:
        rate_bp, per_unit = current.rate_bp, current.per_unit
    row = await conn.fetchrow(
        "UPDATE promoters SET status = $2, rate_bp = $3, per_unit = $4 WHERE agent_id = $1 "  # noqa: S608
        f"RETURNING {_COLUMNS}",
        agent_id,
        status or current.status,
        rate_bp,
        per_unit,
    )
    assert row is not None
    return Promoter(**dict(row))


def _validate_terms(agent_id: int, rate_bp: int | None, per_unit: int | None) -> None:
    if (rate_bp is None) == (per_unit is None):
        raise DomainError(
            CommissionError.INVALID_PROMOTER,
            "A promoter is paid either rate_bp or per_unit, exactly one.",
            promoter_id=agent_id,
        )


def _new_code() -> str:
    # 48 random bits: not guessable, short enough for a link.
    return secrets.token_urlsafe(6)


async def get_promoter(conn: Executor, agent_id: int) -> Promoter:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM promoters WHERE agent_id = $1", agent_id)  # noqa: S608
    if row is None:
        raise DomainError(PromoterError.PROMOTER_NOT_FOUND, f"Agent {agent_id} is no promoter.")
    return Promoter(**dict(row))


async def promoter_for_order(conn: Executor, code: str, store_agent_id: int | None) -> Promoter:
    """The active promoter of a link code, if it may be paid on this order."""
    # A suspended agent is paid nothing, as a promoter either.
    row = await conn.fetchrow(
        "SELECT p.agent_id, p.code, p.rate_bp, p.per_unit, p.store_agent_id, p.status, "
        "p.created_at FROM promoters p JOIN agents a ON a.id = p.agent_id "
        "WHERE p.code = $1 AND p.status = 'active' AND a.status = 'active'",
        code,
    )
    if row is None:
        raise DomainError(PromoterError.PROMOTER_NOT_FOUND, "No active promoter with this code.")
    promoter = Promoter(**dict(row))
    if promoter.store_agent_id is not None and promoter.store_agent_id != store_agent_id:
        raise DomainError(
            PromoterError.PROMOTER_NOT_FOR_STORE,
            "This promoter code is not valid for this store.",
        )
    return promoter


async def earnings(conn: Executor, agent_id: int) -> Earnings:
    """Live money only: test orders (placed with test keys) pay into the test balance."""
    row = await conn.fetchrow(
        "SELECT "
        # Shares are credited when an order is delivered, and reversed only then by its
        # refund: a paid order that could not deliver (refund_due) was never credited.
        "coalesce(sum(s.amount) FILTER (WHERE o.status = 'delivered'), 0) AS earned, "
        "coalesce(sum(s.amount) FILTER (WHERE o.status = 'pending_payment'), 0) AS pending, "
        "coalesce(sum(s.amount) FILTER (WHERE o.status = 'refunded' "
        "AND o.delivered_at IS NOT NULL), 0) AS reversed, "
        "count(DISTINCT o.id) AS orders "
        "FROM orders o LEFT JOIN order_shares s ON s.order_id = o.id AND s.kind = 'promoter' "
        "AND s.agent_id = $1 WHERE o.promoter_agent_id = $1 AND o.mode = 'live'",
        agent_id,
    )
    assert row is not None
    return Earnings(
        earned=int(row["earned"]),
        pending=int(row["pending"]),
        reversed=int(row["reversed"]),
        orders=int(row["orders"]),
    )


async def attributed_orders(
    conn: Executor, agent_id: int, *, limit: int, cursor: str | None
) -> tuple[list[AttributedOrder], str | None]:
    """The promoter's orders, newest first, with the commission each carries."""
    before = cursors.decode("promoted", cursor)
    rows = await conn.fetch(
        "SELECT o.id, o.order_no, o.status, o.sku, o.quantity, o.amount, o.currency, "
        "o.store_agent_id, o.mode, o.created_at, coalesce(sum(s.amount), 0) AS commission "
        "FROM orders o LEFT JOIN order_shares s ON s.order_id = o.id AND s.kind = 'promoter' "
        "AND s.agent_id = $1 WHERE o.promoter_agent_id = $1 AND ($2::bigint IS NULL OR o.id < $2) "
        "GROUP BY o.id ORDER BY o.id DESC LIMIT $3",
        agent_id,
        before,
        limit + 1,
    )
    page = rows[:limit]
    next_cursor = cursors.encode("promoted", page[-1]["id"]) if len(rows) > limit else None
    return [
        AttributedOrder(
            order_no=r["order_no"],
            status=r["status"],
            sku=r["sku"],
            quantity=r["quantity"],
            amount=r["amount"],
            currency=r["currency"],
            commission=int(r["commission"]),
            store_agent_id=r["store_agent_id"],
            mode=r["mode"],
            created_at=r["created_at"],
        )
        for r in page
    ], next_cursor
