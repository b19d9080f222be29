"""Withdrawals: an agent asks to be paid out part of its balance; an operator decides.

    requested --approve--> approved   (withdrawing -> bank: the money left the platform)
    requested --reject---> rejected   (withdrawing -> balance: the funds are the agent's again)

The request reserves the amount at once, moving it from `agent:N:balance` to
`agent:N:withdrawing` in the same transaction that records the request, so the agent cannot
spend it while it waits. Only funds the agent has can be withdrawn — never its credit
line: a withdrawal is cash out of the platform, and paying out credit would be a loan
nobody approved. Each transition is one transaction guarded by the current status; asking
for the transition that already happened answers the withdrawal as it is (idempotent), the
other one is `invalid_withdrawal_state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from engine import audit
from engine.errors import DomainError
from engine.ledger.service import (
    AccountKind,
    LedgerError,
    agent_account_code,
    bank_account_code,
    ensure_account,
    post,
    withdrawing_account_code,
)
from engine.storage.db import Connection, Executor


class WithdrawalError(StrEnum):
    WITHDRAWAL_NOT_FOUND = "withdrawal_not_found"
    INVALID_WITHDRAWAL_STATE = "invalid_withdrawal_state"


class WithdrawalStatus(StrEnum):
    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Withdrawal:
    id: int
    agent_id: int
    amount: int
    currency: str
    status: str
    destination: str | None
    note: str | None
    reason: str | None
    decided_by: str | None
    decided_at: datetime | None
    created_at: datetime


def _withdrawal(row: asyncpg.Record) -> Withdrawal:
    return Withdrawal(**{name: row[name] for name in Withdrawal.__dataclass_fields__})


async def _agent_accounts(conn: Connection, agent_id: int, currency: str) -> tuple[int, int]:
    balance = await ensure_account(
        conn,
        agent_account_code(agent_id),
        AccountKind.LIABILITY,
        currency=currency,
        agent_id=agent_id,
    )
    withdrawing = await ensure_account(
        conn, withdrawing_account_code(agent_id), AccountKind.LIABILITY, currency=currency,
        agent_id=agent_id,
    )  # fmt: skip
    return balance, withdrawing


async def request(
    conn: Connection,
    agent_id: int,
    amount: int,
    *,
    actor: str,
    destination: str | None = None,
    note: str | None = None,
) -> Withdrawal:
    """Reserve `amount` of the agent's balance for a payout; in the caller's transaction."""
    if type(amount) is not int or amount <= 0:
        raise DomainError(LedgerError.INVALID_AMOUNT, "A withdrawal must be a positive amount.")
    currency: str | None = await conn.fetchval(
        "SELECT currency FROM accounts WHERE code = $1", agent_account_code(agent_id)
    )
    if currency is None:
        raise DomainError(LedgerError.INSUFFICIENT_BALANCE, "There is no balance to withdraw.")
    balance, withdrawing = await _agent_accounts(conn, agent_id, currency)
    # Both rows locked in id order (as `post` does), before reading the balance, so two
    # requests (or a request and a purchase) cannot both spend the same funds.
    rows = await conn.fetch(
        "SELECT id, balance FROM accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        [balance, withdrawing],
    )
    funds = -next(r["balance"] for r in rows if r["id"] == balance)
    if amount > funds:
        raise DomainError(
            LedgerError.INSUFFICIENT_BALANCE,
            f"The balance does not cover a withdrawal of {amount}; nothing was reserved.",
        )
    # The id first, so the entry (append-only) names its withdrawal in statements.
    withdrawal_id: int = await conn.fetchval(
        "SELECT nextval(pg_get_serial_sequence('withdrawals', 'id'))"
    )
    entry = await post(
        conn,
        "withdrawal.requested",
        [(balance, amount), (withdrawing, -amount)],
        reference=f"withdrawal:{withdrawal_id}",
    )
    row = await conn.fetchrow(
        "INSERT INTO withdrawals (id, agent_id, amount, currency, destination, note, "
        "request_entry_id) OVERRIDING SYSTEM VALUE VALUES ($7, $1, $2, $3, $4, $5, $6) "
        "RETURNING *",
        agent_id,
        amount,
        currency,
        destination,
        note,
        entry,
        withdrawal_id,
    )
    assert row is not None
    await audit.record(
        conn,
        actor,
        "withdrawal.requested",
        f"withdrawal:{row['id']}",
        {"agent_id": agent_id, "amount": amount, "entry_id": entry},
    )
    return _withdrawal(row)


async def decide(
    conn: Connection,
    withdrawal_id: int,
    decision: WithdrawalStatus,
    *,
    actor: str,
    reason: str | None = None,
    now: datetime,
) -> Withdrawal:
    """requested -> approved | rejected, with its entry and audit record, in the caller's
    transaction. Repeating the decision already taken changes nothing and returns it."""
    if decision is WithdrawalStatus.REQUESTED:
        raise ValueError("a decision is approved or rejected")
    row = await conn.fetchrow("SELECT * FROM withdrawals WHERE id = $1 FOR UPDATE", withdrawal_id)
    if row is None:
        raise _not_found(withdrawal_id)
    if row["status"] == decision.value:
        return _withdrawal(row)
    if row["status"] != WithdrawalStatus.REQUESTED:
        raise DomainError(
            WithdrawalError.INVALID_WITHDRAWAL_STATE,
            f"Withdrawal {withdrawal_id} is {row['status']}; it cannot be {decision.value}.",
            withdrawal_status=row["status"],
        )
    agent_id, amount, currency = row["agent_id"], row["amount"], row["currency"]
    balance, withdrawing = await _agent_accounts(conn, agent_id, currency)
    if decision is WithdrawalStatus.APPROVED:
        bank = await ensure_account(
            conn, bank_account_code(currency), AccountKind.ASSET, currency=currency
        )
        lines = [(withdrawing, amount), (bank, -amount)]
    else:
        lines = [(withdrawing, amount), (balance, -amount)]
    entry = await post(
        conn, f"withdrawal.{decision.value}", lines, reference=f"withdrawal:{withdrawal_id}"
    )
    updated = await conn.fetchrow(
        "UPDATE withdrawals SET status = $2, decided_by = $3, decided_at = $4, reason = $5, "
        "decision_entry_id = $6 WHERE id = $1 AND status = 'requested' RETURNING *",
        withdrawal_id,
        decision.value,
        actor,
        now,
        reason,
        entry,
    )
    assert updated is not None  # the row is locked and was 'requested'
    await audit.record(
        conn,
        actor,
        f"withdrawal.{decision.value}",
        f"withdrawal:{withdrawal_id}",
        {"agent_id": agent_id, "amount": amount, "entry_id": entry, "reason": reason},
    )
    return _withdrawal(updated)


async def get(conn: Executor, withdrawal_id: int) -> Withdrawal:
    row = await conn.fetchrow("SELECT * FROM withdrawals WHERE id = $1", withdrawal_id)
    if row is None:
        raise _not_found(withdrawal_id)
    return _withdrawal(row)


async def list_withdrawals(
    conn: Executor,
    *,
    limit: int,
    before_id: int | None = None,
    status: str | None = None,
    agent_id: int | None = None,
) -> list[Withdrawal]:
    """Newest first; `before_id` is the keyset cursor."""
    rows = await conn.fetch(
        "SELECT * FROM withdrawals WHERE ($1::bigint IS NULL OR id < $1) "
        "AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR agent_id = $3) "
        "ORDER BY id DESC LIMIT $4",
        before_id,
        status,
        agent_id,
        limit,
    )
    return [_withdrawal(r) for r in rows]


def _not_found(withdrawal_id: int) -> DomainError:
    return DomainError(WithdrawalError.WITHDRAWAL_NOT_FOUND, f"No withdrawal {withdrawal_id}.")
