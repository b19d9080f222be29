"""Posting balanced journal entries.

Amounts are integers in minor units (分). A line's amount is positive for a debit and
negative for a credit; every entry sums to zero (also enforced by a deferred constraint
trigger). `accounts.balance` is the running sum of an account's lines, updated in the same
transaction, with rows locked in id order so concurrent postings cannot deadlock.

An agent's prepaid balance is a liability of the merchant: credits raise it, so the
balance an agent sees is the negation of its account's debit-positive sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from engine.errors import DomainError
from engine.storage.db import Connection


class LedgerError(StrEnum):
    INSUFFICIENT_BALANCE = "insufficient_balance"
    INVALID_AMOUNT = "invalid_amount"


class AccountKind(StrEnum):
    ASSET = "asset"
    LIABILITY = "liability"
    EQUITY = "equity"
    REVENUE = "revenue"
    EXPENSE = "expense"


@dataclass(frozen=True)
class TrialBalance:
    debits: int
    credits: int

    @property
    def balanced(self) -> bool:
        return self.debits == self.credits


def agent_account_code(agent_id: int, mode: str = "live") -> str:
    # The sandbox's money (test keys, test deposits) never mixes with the live balance.
    return f"agent:{agent_id}:test_balance" if mode == "test" else f"agent:{agent_id}:balance"


def held_account_code(agent_id: int) -> str:
    """Commissions earned but held T+N days: owed to the agent, not yet spendable."""
    return f"agent:{agent_id}:held"


def withdrawing_account_code(agent_id: int) -> str:
    """Funds an agent asked to be paid out, reserved until an operator decides."""
    return f"agent:{agent_id}:withdrawing"


def bank_account_code(currency: str, mode: str = "live") -> str:
    return f"platform:test_bank:{currency}" if mode == "test" else f"platform:bank:{currency}"


def revenue_account_code(currency: str, mode: str = "live") -> str:
    return f"platform:test_revenue:{currency}" if mode == "test" else f"platform:revenue:{currency}"


def clearing_account_code(provider: str, currency: str) -> str:
    """Money a payment provider collected for us and has not yet settled to the bank."""
    return f"platform:clearing:{provider}:{currency}"


def supplier_payable_code(currency: str) -> str:
    """What the platform owes its key suppliers (batch unit costs)."""
    return f"platform:supplier_payable:{currency}"


async def ensure_account(
    conn: Connection,
    code: str,
    kind: AccountKind,
    *,
    currency: str = "CNY",
    agent_id: int | None = None,
    mode: str = "live",
) -> int:
    account_id: int | None = await conn.fetchval(
        "INSERT INTO accounts (code, kind, currency, agent_id, mode) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (code) DO NOTHING RETURNING id",
        code,
        kind.value,
        currency,
        agent_id,
        mode,
    )
    if account_id is None:
        account_id = await conn.fetchval("SELECT id FROM accounts WHERE code = $1", code)
    assert account_id is not None
    return account_id


async def post(
    conn: Connection,
    kind: str,
    lines: Sequence[tuple[int, int]],
    *,
    reference: str | None = None,
) -> int:
    """Post one balanced entry of `(account_id, amount)` lines in the caller's transaction."""
    if sum(amount for _, amount in lines) != 0 or any(amount == 0 for _, amount in lines):
        raise DomainError(LedgerError.INVALID_AMOUNT, "A journal entry must balance.")
    entry_id: int = await conn.fetchval(
        "INSERT INTO journal_entries (kind, reference) VALUES ($1, $2) RETURNING id",
        kind,
        reference,
    )
    ordered = sorted(lines)
    await conn.execute(
        "SELECT id FROM accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        [account for account, _ in ordered],
    )
    # One statement for all lines: the balance check runs once per statement.
    await conn.execute(
        "INSERT INTO journal_lines (entry_id, account_id, amount) "
        "SELECT $1, account, amount FROM unnest($2::bigint[], $3::bigint[]) AS l(account, amount)",
        entry_id,
        [account for account, _ in ordered],
        [amount for _, amount in ordered],
    )
    await conn.executemany("UPDATE accounts SET balance = balance + $2 WHERE id = $1", ordered)
    return entry_id


async def deposit(
    conn: Connection,
    agent_id: int,
    amount: int,
    *,
    currency: str = "CNY",
    reference: str | None = None,
    mode: str = "live",
) -> tuple[int, int]:
    """Credit an agent's prepaid balance (预存款), or its sandbox balance (`mode` test,
    money that exists only for test keys); returns (entry id, new balance)."""
    if amount <= 0:
        raise DomainError(LedgerError.INVALID_AMOUNT, "A deposit must be a positive amount.")
    bank = await ensure_account(
        conn, bank_account_code(currency, mode), AccountKind.ASSET, currency=currency, mode=mode
    )
    agent = await ensure_account(
        conn,
        agent_account_code(agent_id, mode),
        AccountKind.LIABILITY,
        currency=currency,
        agent_id=agent_id,
        mode=mode,
    )
    kind = "test.deposit" if mode == "test" else "deposit"
    entry = await post(conn, kind, [(bank, amount), (agent, -amount)], reference=reference)
    balance: int = await conn.fetchval("SELECT -balance FROM accounts WHERE id = $1", agent)
    return entry, balance


def purchases_account_code(currency: str) -> str:
    """What stock cost the platform, expensed when it is received (periodic inventory)."""
    return f"platform:purchases:{currency}"


async def receive_stock(
    conn: Connection, amount: int, *, currency: str, reference: str
) -> int | None:
    """A batch bought from a supplier at a unit cost: its cost owed to the supplier
    (`supplier_payable`), expensed as purchases. Returns the entry id; None for free stock."""
    if amount <= 0:
        return None
    purchases = await ensure_account(
        conn, purchases_account_code(currency), AccountKind.EXPENSE, currency=currency
    )
    payable = await ensure_account(
        conn, supplier_payable_code(currency), AccountKind.LIABILITY, currency=currency
    )
    return await post(
        conn, "batch.received", [(purchases, amount), (payable, -amount)], reference=reference
    )


async def trial_balance(conn: Connection, mode: str | None = None) -> TrialBalance:
    """Over every account, or over one mode's: the sandbox balances on its own."""
    if mode is None:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(amount) FILTER (WHERE amount > 0), 0) AS debits, "
            "coalesce(-sum(amount) FILTER (WHERE amount < 0), 0) AS credits FROM journal_lines"
        )
    else:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(l.amount) FILTER (WHERE l.amount > 0), 0) AS debits, "
            "coalesce(-sum(l.amount) FILTER (WHERE l.amount < 0), 0) AS credits "
            "FROM journal_lines l JOIN accounts a ON a.id = l.account_id WHERE a.mode = $1",
            mode,
        )
    assert row is not None
    return TrialBalance(debits=int(row["debits"]), credits=int(row["credits"]))
