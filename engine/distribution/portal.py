"""What an agent sees of itself with its own API key: its money, its issuances and orders,
and its direct sub-agents with their sales. Reads only; never a card key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.distribution.service import DistributionError
from engine.errors import DomainError
from engine.ledger.service import (
    agent_account_code,
    held_account_code,
    withdrawing_account_code,
)
from engine.storage.db import Executor


@dataclass(frozen=True)
class AccountSummary:
    agent_id: int
    name: str
    level_id: int
    parent_id: int | None
    currency: str
    balance: int
    held: int
    withdrawing: int
    commission_total: int
    credit_limit: int
    # What the agent can spend now: its balance and its credit line.
    spendable: int


@dataclass(frozen=True)
class IssuanceSummary:
    id: int
    public_id: str
    sku: str
    quantity: int
    amount: int
    currency: str
    reference: str | None
    created_at: datetime


@dataclass(frozen=True)
class OrderSummary:
    id: int
    order_no: str
    status: str
    sku: str
    quantity: int
    amount: int
    currency: str
    created_at: datetime
    paid_at: datetime | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class SalesTotals:
    issuance_count: int = 0
    issuance_total: int = 0
    order_count: int = 0
    order_total: int = 0


async def summary(conn: Executor, agent_id: int, mode: str = "live") -> AccountSummary:
    """The money of one mode. The sandbox has a balance only: its commissions go to the
    test balance at once (never held) and it cannot be withdrawn, so `held` and
    `withdrawing` are 0; `commissions` records live earnings only, so its
    `commission_total` is 0 too."""
    live = mode == "live"
    row = await conn.fetchrow(
        "SELECT a.id, a.name, a.level_id, a.parent_id, a.credit_limit, "
        "coalesce(b.currency, 'CNY') AS currency, coalesce(-b.balance, 0) AS balance, "
        "coalesce(-h.balance, 0) AS held, coalesce(-w.balance, 0) AS withdrawing, "
        "coalesce((SELECT sum(c.amount) FROM commissions c WHERE c.agent_id = a.id "
        "AND c.reversed_at IS NULL AND $5), 0)::bigint AS commission_total "
        "FROM agents a LEFT JOIN accounts b ON b.code = $2 "
        "LEFT JOIN accounts h ON h.code = $3 LEFT JOIN accounts w ON w.code = $4 "
        "WHERE a.id = $1",
        agent_id,
        agent_account_code(agent_id, mode),
        held_account_code(agent_id) if live else None,
        withdrawing_account_code(agent_id) if live else None,
        live,
    )
    if row is None:
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent_id}.")
    return AccountSummary(
        agent_id=row["id"],
        name=row["name"],
        level_id=row["level_id"],
        parent_id=row["parent_id"],
        currency=row["currency"].strip(),
        balance=int(row["balance"]),
        held=int(row["held"]),
        withdrawing=int(row["withdrawing"]),
        commission_total=int(row["commission_total"]),
        credit_limit=int(row["credit_limit"]),
        spendable=int(row["balance"]) + int(row["credit_limit"]),
    )


async def issuances(
    conn: Executor,
    agent_id: int,
    *,
    limit: int,
    before_id: int | None = None,
    mode: str = "live",
) -> list[IssuanceSummary]:
    """Newest first, of one mode, without keys (`GET /v1/issuances/{id}` reveals them,
    audited)."""
    rows = await conn.fetch(
        "SELECT id, public_id, sku, quantity, amount, currency, reference, created_at "
        "FROM issuances WHERE agent_id = $1 AND mode = $4 AND ($2::bigint IS NULL OR id < $2) "
        "ORDER BY id DESC LIMIT $3",
        agent_id,
        before_id,
        limit,
        mode,
    )
    return [IssuanceSummary(**dict(r)) for r in rows]


async def orders(
    conn: Executor,
    agent_id: int,
    *,
    limit: int,
    before_id: int | None = None,
    mode: str = "live",
) -> list[OrderSummary]:
    """The agent's sub-store orders of one mode, newest first; no buyer contact, no keys."""
    rows = await conn.fetch(
        "SELECT id, order_no, status, sku, quantity, amount, currency, created_at, paid_at, "
        "delivered_at FROM orders WHERE store_agent_id = $1 AND mode = $4 "
        "AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        agent_id,
        before_id,
        limit,
        mode,
    )
    return [OrderSummary(**dict(r)) for r in rows]


async def sales_totals(
    conn: Executor, agent_ids: Sequence[int], mode: str = "live"
) -> dict[int, SalesTotals]:
    """What each agent bought through the API and sold through its sub-store (delivered
    orders, in one mode; refunded issuances and orders no longer count)."""
    rows = await conn.fetch(
        "SELECT a.id, coalesce(i.n, 0) AS issuance_count, coalesce(i.total, 0) AS issuance_total, "
        "coalesce(o.n, 0) AS order_count, coalesce(o.total, 0) AS order_total "
        "FROM unnest($1::bigint[]) AS a(id) "
        "LEFT JOIN LATERAL (SELECT count(*) AS n, sum(amount)::bigint AS total "
        " FROM issuances WHERE agent_id = a.id AND mode = $2 AND refunded_at IS NULL) i ON true "
        "LEFT JOIN LATERAL (SELECT count(*) AS n, sum(amount)::bigint AS total FROM orders "
        " WHERE store_agent_id = a.id AND status = 'delivered' AND mode = $2) o ON true",
        list(agent_ids),
        mode,
    )
    return {r["id"]: SalesTotals(**{k: v for k, v in dict(r).items() if k != "id"}) for r in rows}
