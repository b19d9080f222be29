"""Commissions after they are earned: held T+N, released by a job, reversed by refunds.

A commission is credited in the commit of its sale, to `agent:N:balance` or, when the
agent's level holds commissions (`agent_levels.commission_hold_days`), to `agent:N:held`
with a `release_at`. `release_held` moves each due one to the balance with its own entry.
A refund reverses a commission from the account that holds it at that moment; the row
guards (`released_at IS NULL AND reversed_at IS NULL`) make release and reversal
exclusive, whichever commits first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from engine.distribution.service import DistributionError
from engine.errors import DomainError
from engine.ledger.service import (
    AccountKind,
    LedgerError,
    agent_account_code,
    ensure_account,
    held_account_code,
    post,
)
from engine.storage.db import Connection, Executor

log = structlog.get_logger(__name__)

RELEASE_BATCH = 500
RELEASE_INTERVAL_S = 60.0
MAX_HOLD_DAYS = 365  # the schema's bound too


@dataclass(frozen=True)
class AgentShare:
    """An agent's share of a sale, to be credited (or held) in the sale's entry."""

    agent_id: int
    kind: str
    amount: int


@dataclass(frozen=True)
class CreditLine:
    share: AgentShare
    account_id: int
    release_at: datetime | None


async def hold_days(conn: Executor, agent_ids: Sequence[int]) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT a.id, l.commission_hold_days FROM agents a "
        "JOIN agent_levels l ON l.id = a.level_id WHERE a.id = ANY($1::bigint[])",
        list(agent_ids),
    )
    return {r["id"]: r["commission_hold_days"] for r in rows}


async def credit_lines(
    conn: Connection,
    shares: Sequence[AgentShare],
    currency: str,
    now: datetime,
    *,
    mode: str = "live",
) -> list[CreditLine]:
    """Where each share goes: the balance, or the held account until its release time.
    Sandbox shares go to the test balance at once: nothing real is earned, so nothing held."""
    live = mode == "live"
    days = await hold_days(conn, [s.agent_id for s in shares]) if live else {}
    lines: list[CreditLine] = []
    for share in shares:
        held = days.get(share.agent_id, 0)
        code = (
            held_account_code(share.agent_id) if held else agent_account_code(share.agent_id, mode)
        )
        account = await ensure_account(
            conn,
            code,
            AccountKind.LIABILITY,
            currency=currency,
            agent_id=share.agent_id,
            mode=mode,
        )
        lines.append(CreditLine(share, account, now + timedelta(days=held) if held else None))
    return lines


async def record(
    conn: Connection,
    source: str,
    reference: str,
    entry_id: int,
    currency: str,
    lines: Sequence[CreditLine],
) -> None:
    """The `commissions` rows of a posted sale entry."""
    if not lines:
        return
    await conn.executemany(
        "INSERT INTO commissions (agent_id, source, reference, kind, amount, currency, "
        "entry_id, release_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (
                line.share.agent_id,
                source,
                reference,
                line.share.kind,
                line.share.amount,
                currency,
                entry_id,
                line.release_at,
            )
            for line in lines
        ],
    )


async def reverse(
    conn: Connection, source: str, reference: str, now: datetime
) -> list[tuple[int, int, int]]:
    """Mark a sale's commissions reversed; returns (commission id, account id, amount) of
    each, the account being where its money is now (held, or the balance once released).
    The caller posts the reversing entry and then `link_reversal`."""
    rows = await conn.fetch(
        "UPDATE commissions SET reversed_at = $3 "
        "WHERE source = $1 AND reference = $2 AND reversed_at IS NULL "
        "RETURNING id, agent_id, amount, currency, release_at, released_at",
        source,
        reference,
        now,
    )
    found: list[tuple[int, int, int]] = []
    for row in sorted(rows, key=lambda r: r["id"]):
        still_held = row["release_at"] is not None and row["released_at"] is None
        code = (
            held_account_code(row["agent_id"])
            if still_held
            else agent_account_code(row["agent_id"])
        )
        account = await ensure_account(
            conn,
            code,
            AccountKind.LIABILITY,
            currency=row["currency"],
            agent_id=row["agent_id"],
        )
        found.append((row["id"], account, row["amount"]))
    return found


async def link_reversal(conn: Connection, commission_ids: Sequence[int], entry_id: int) -> None:
    await conn.execute(
        "UPDATE commissions SET reversal_entry_id = $2 WHERE id = ANY($1::bigint[])",
        list(commission_ids),
        entry_id,
    )


async def release_held(conn: Connection, now: datetime, *, limit: int = RELEASE_BATCH) -> int:
    """Move every held commission due at `now` to its agent's balance, one balanced entry
    and one transaction each; returns how many. Safe to run in every worker at once:
    `SKIP LOCKED` spreads the rows, the guard releases each exactly once."""
    due = await conn.fetch(
        "SELECT id FROM commissions WHERE release_at <= $1 AND released_at IS NULL "
        "AND reversed_at IS NULL ORDER BY release_at, id LIMIT $2",
        now,
        limit,
    )
    released = 0
    for candidate in due:
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT id, agent_id, amount, currency, reference FROM commissions "
                "WHERE id = $1 AND released_at IS NULL AND reversed_at IS NULL "
                "FOR UPDATE SKIP LOCKED",
                candidate["id"],
            )
            if row is None:
                continue  # released or reversed meanwhile, or another worker has it
            agent, currency = row["agent_id"], row["currency"]
            held = await ensure_account(
                conn,
                held_account_code(agent),
                AccountKind.LIABILITY,
                currency=currency,
                agent_id=agent,
            )
            balance = await ensure_account(
                conn,
                agent_account_code(agent),
                AccountKind.LIABILITY,
                currency=currency,
                agent_id=agent,
            )
            entry = await post(
                conn,
                "commission.release",
                [(held, row["amount"]), (balance, -row["amount"])],
                reference=f"commission:{row['id']}",
            )
            await conn.execute(
                "UPDATE commissions SET released_at = $2, release_entry_id = $3 WHERE id = $1",
                row["id"],
                now,
                entry,
            )
            released += 1
    return released


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def release_forever(
    db: asyncpg.Pool,
    *,
    interval_s: float = RELEASE_INTERVAL_S,
    clock: Callable[[], datetime] = _utcnow,
) -> None:
    """The background job: release due commissions every `interval_s` (each worker runs
    one, like the order sweeper)."""
    while True:
        try:
            async with db.acquire() as conn:
                count = await release_held(conn, clock())
            if count:
                log.info("commissions_released", count=count)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("commission_release_failed", error=type(exc).__name__)
        await asyncio.sleep(interval_s)


@dataclass(frozen=True)
class Earnings:
    held: int
    commission_total: int


async def earnings(conn: Executor, agent_id: int) -> Earnings:
    """What the agent has waiting in `held`, and every commission it earned, net of
    reversals."""
    row = await conn.fetchrow(
        "SELECT coalesce((SELECT -balance FROM accounts WHERE code = $2), 0) AS held, "
        "coalesce((SELECT sum(amount) FROM commissions WHERE agent_id = $1 "
        "AND reversed_at IS NULL), 0)::bigint AS commission_total",
        agent_id,
        held_account_code(agent_id),
    )
    assert row is not None
    return Earnings(held=int(row["held"]), commission_total=int(row["commission_total"]))


async def set_hold_days(conn: Connection, level_id: int, days: int) -> int:
    """Hold the level's commissions `days` days from now on (0: credit them at once).
    Commissions already earned keep the release time they were given."""
    if type(days) is not int or not 0 <= days <= MAX_HOLD_DAYS:
        raise DomainError(LedgerError.INVALID_AMOUNT, f"A hold is 0 to {MAX_HOLD_DAYS} days.")
    updated: int | None = await conn.fetchval(
        "UPDATE agent_levels SET commission_hold_days = $2 WHERE id = $1 RETURNING id",
        level_id,
        days,
    )
    if updated is None:
        raise DomainError(DistributionError.LEVEL_NOT_FOUND, f"No agent level {level_id}.")
    return days
