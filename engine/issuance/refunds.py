"""Refunding an API issuance: keys revoked, the buyer's debit returned, commissions reversed.

All of it in one transaction on the issuance's locked row, guarded by `refunded_at IS NULL`,
so concurrent or repeated refunds refund once. The keys go to `revoked` (they were shown to
the buyer: never back in the pool). The reversing entry mirrors the issuance's: the amount
back to the account it was paid from (`agent:N:balance`, or the test balance for a sandbox
issuance), each ancestor's commission taken back from where it is now (its held account,
or its balance once released — which may take that balance below zero, as an order refund
does), and the rest from the revenue it was credited to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from engine import audit
from engine.errors import DomainError
from engine.issuance.errors import IssuanceError
from engine.ledger import commissions
from engine.ledger.service import (
    AccountKind,
    agent_account_code,
    ensure_account,
    post,
    revenue_account_code,
)
from engine.storage.db import Connection


@dataclass(frozen=True)
class ReversedCommission:
    agent_id: int
    amount: int
    # "held" or "balance": where it was taken back from.
    account: str


@dataclass(frozen=True)
class IssuanceRefund:
    public_id: str
    agent_id: int
    mode: str
    sku: str
    quantity: int
    amount: int
    currency: str
    reason: str | None
    refunded_at: datetime
    entry_id: int | None
    keys_revoked: int
    commissions: list[ReversedCommission]


async def refund_issuance(
    conn: Connection, public_id: str, *, actor: str, reason: str | None, now: datetime
) -> IssuanceRefund:
    """Refund the issuance once (see the module's docstring); a second refund is
    `issuance_already_refunded`, an unknown id `issuance_not_found`."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT id, public_id, agent_id, mode, sku, quantity, amount, currency, refunded_at "
            "FROM issuances WHERE public_id = $1 FOR UPDATE",
            public_id,
        )
        if row is None:
            raise DomainError(IssuanceError.ISSUANCE_NOT_FOUND, "No such issuance.")
        if row["refunded_at"] is not None:
            raise DomainError(
                IssuanceError.ISSUANCE_ALREADY_REFUNDED,
                f"Issuance {public_id} was refunded at {row['refunded_at'].isoformat()}.",
            )
        revoked = await conn.fetchval(
            "WITH r AS (UPDATE card_keys SET state = 'revoked' WHERE id IN "
            "(SELECT card_key_id FROM issuance_keys WHERE issuance_id = $1) "
            "AND state = 'issued' RETURNING 1) SELECT count(*) FROM r",
            row["id"],
        )
        entry_id, reversed_ = await _journal(conn, row, now)
        await conn.execute(
            "UPDATE issuances SET refunded_at = $2, refund_entry_id = $3, refund_reason = $4 "
            "WHERE id = $1",
            row["id"],
            now,
            entry_id,
            reason,
        )
        refund = IssuanceRefund(
            public_id=public_id,
            agent_id=row["agent_id"],
            mode=row["mode"],
            sku=row["sku"],
            quantity=row["quantity"],
            amount=row["amount"],
            currency=row["currency"],
            reason=reason,
            refunded_at=now,
            entry_id=entry_id,
            keys_revoked=int(revoked),
            commissions=reversed_,
        )
        await audit.record(
            conn,
            actor,
            "issuance.refunded",
            f"issuance:{public_id}",
            {
                "reason": reason,
                "agent_id": refund.agent_id,
                "mode": refund.mode,
                "amount": refund.amount,
                "entry_id": entry_id,
                "keys_revoked": refund.keys_revoked,
                "commissions": [vars(c) for c in reversed_],
            },
        )
    return refund


async def _journal(
    conn: Connection, row: asyncpg.Record, now: datetime
) -> tuple[int | None, list[ReversedCommission]]:
    amount: int = row["amount"]
    public_id: str = row["public_id"]
    mode: str = row["mode"]
    currency: str = row["currency"]
    taken_back = await commissions.reverse(conn, "issuance", public_id, now)
    if amount == 0:
        # A free issuance posted no entry, so it earned nobody anything.
        return None, []
    buyer = await ensure_account(
        conn,
        agent_account_code(row["agent_id"], mode),
        AccountKind.LIABILITY,
        currency=currency,
        agent_id=row["agent_id"],
        mode=mode,
    )
    revenue = await ensure_account(
        conn,
        revenue_account_code(currency, mode),
        AccountKind.REVENUE,
        currency=currency,
        mode=mode,
    )
    lines: dict[int, int] = {buyer: -amount}
    for _, account, value in taken_back:
        lines[account] = lines.get(account, 0) + value
    rest = amount - sum(value for _, _, value in taken_back)
    lines[revenue] = lines.get(revenue, 0) + rest
    entry = await post(
        conn,
        "issuance.refund",
        [(account, value) for account, value in lines.items() if value != 0],
        reference=public_id,
    )
    if taken_back:
        await commissions.link_reversal(conn, [c for c, _, _ in taken_back], entry)
    held = {
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM accounts WHERE id = ANY($1::bigint[]) AND code LIKE '%:held'",
            [account for _, account, _ in taken_back],
        )
    }
    agents = {
        r["id"]: r["agent_id"]
        for r in await conn.fetch(
            "SELECT id, agent_id FROM commissions WHERE id = ANY($1::bigint[])",
            [c for c, _, _ in taken_back],
        )
    }
    reversed_ = [
        ReversedCommission(agents[c], value, "held" if account in held else "balance")
        for c, account, value in taken_back
    ]
    return entry, reversed_


__all__ = ["IssuanceRefund", "ReversedCommission", "refund_issuance"]
