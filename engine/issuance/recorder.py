"""Group commit: every in-flight issuance of this worker is recorded in one transaction.

While one flush is committing, new issuances queue; the next flush takes all of them (no
timer: batches grow with load, a lone request is committed at once). One transaction per
flush, with `synchronous_commit` on, so a key is visible to its buyer only once durable.

Inside the transaction, in this order:
1. agent accounts are locked in id order and each issuance's debit is checked against the
   agent's balance and credit limit; one that does not fit is rejected (its keys go back);
2. issuances are inserted; one whose (agent, Idempotency-Key) already exists is a retry of
   a committed request and is answered from that record;
3. the card keys are marked issued with a state guard — `state = 'available'` — and the
   updated row count must match: a key that is not available is an integrity alarm, the
   issuance it belongs to is dropped, nothing of it is delivered, and the flush is retried
   without it;
4. issuance keys, journal entries (agent debit, revenue credit) and account balances.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

import asyncpg
import structlog

from engine.ledger.service import (
    AccountKind,
    agent_account_code,
    ensure_account,
    revenue_account_code,
)
from engine.metrics import FLUSH_LATENCY, FLUSH_SIZE, INTEGRITY_ALARMS

log = structlog.get_logger(__name__)

MAX_FLUSH = 256


class Outcome(Enum):
    COMMITTED = "committed"
    REPLAY = "replay"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    INTEGRITY_ALARM = "integrity_alarm"


@dataclass
class PendingIssuance:
    agent_id: int
    api_key_id: int | None
    idempotency_key: str
    request_hash: bytes
    product_id: int
    sku: str
    unit_price: int
    currency: str
    reference: str | None
    holder: str
    entry_ids: list[int]
    # "test": a sandbox key's issuance, paid from the agent's test balance.
    mode: str = "live"

    @property
    def payer(self) -> tuple[int, str]:
        """The account that pays: the agent's live or test balance."""
        return (self.agent_id, self.mode)

    @property
    def quantity(self) -> int:
        return len(self.entry_ids)

    @property
    def amount(self) -> int:
        return self.unit_price * self.quantity


@dataclass
class Recorded:
    outcome: Outcome
    issuance_id: int | None = None
    public_id: str | None = None
    created_at: datetime | None = None
    expires_at: dict[int, datetime | None] = field(default_factory=dict)
    balance_after: int | None = None
    # The agent's spendable funds (credit limit - balance) this commit left.
    spendable_after: int | None = None
    # For an integrity alarm: the entries the database says are not available.
    unavailable: frozenset[int] = frozenset()


@dataclass
class _Slot:
    item: PendingIssuance
    future: asyncio.Future[Recorded]


def new_public_id() -> str:
    return "iss_" + secrets.token_hex(12)


class GroupCommitRecorder:
    def __init__(self, db: asyncpg.Pool, *, max_flush: int = MAX_FLUSH) -> None:
        self._db = db
        self._max_flush = max_flush
        self._queue: list[_Slot] = []
        self._runner: asyncio.Task[None] | None = None
        self._revenue_accounts: dict[tuple[str, str], int] = {}

    async def record(self, item: PendingIssuance) -> Recorded:
        future: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._queue.append(_Slot(item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    async def close(self) -> None:
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _run(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_flush]
            del self._queue[: self._max_flush]
            started = asyncio.get_running_loop().time()
            try:
                results = await self._flush([slot.item for slot in batch])
            except Exception as exc:
                for slot in batch:
                    if not slot.future.done():
                        slot.future.set_exception(exc)
                continue
            FLUSH_SIZE.observe(len(batch))
            FLUSH_LATENCY.observe(asyncio.get_running_loop().time() - started)
            for slot, result in zip(batch, results, strict=True):
                if not slot.future.done():
                    slot.future.set_result(result)

    async def _flush(self, items: list[PendingIssuance]) -> list[Recorded]:
        alarmed: dict[int, frozenset[int]] = {}
        while True:
            try:
                return await self._flush_once(items, alarmed)
            except _GuardMismatch as mismatch:
                # Retry without the issuances whose keys were not available; they deliver
                # nothing. The loop ends: each pass removes at least one issuance.
                for position in mismatch.positions:
                    alarmed[position] = frozenset(
                        set(items[position].entry_ids) & mismatch.card_key_ids
                    )
                INTEGRITY_ALARMS.inc(len(mismatch.positions))
                log.error(
                    "integrity_alarm",
                    reason="card keys not available at commit",
                    card_key_ids=sorted(mismatch.card_key_ids)[:50],
                    skus=sorted({items[p].sku for p in mismatch.positions}),
                )

    async def _revenue_account(self, conn: Any, currency: str, mode: str) -> int:
        account = self._revenue_accounts.get((currency, mode))
        if account is None:
            account = await ensure_account(
                conn,
                revenue_account_code(currency, mode),
                AccountKind.REVENUE,
                currency=currency,
                mode=mode,
            )
            self._revenue_accounts[(currency, mode)] = account
        return account

    async def _flush_once(  # noqa: PLR0915 - one transaction, read top to bottom
        self, items: list[PendingIssuance], alarmed: dict[int, frozenset[int]]
    ) -> list[Recorded]:
        results: list[Recorded | None] = [
            Recorded(Outcome.INTEGRITY_ALARM, unavailable=alarmed[i]) if i in alarmed else None
            for i in range(len(items))
        ]
        live = [i for i in range(len(items)) if i not in alarmed]
        async with self._db.acquire() as conn, conn.transaction():
            revenue = {
                (c, m): await self._revenue_account(conn, c, m)
                for c, m in {(items[i].currency, items[i].mode) for i in live}
            }
            # 1. Balances, locked in account-id order so concurrent flushes cannot deadlock.
            # Keyed by payer (agent, mode): a test key spends the agent's test balance.
            payers = sorted({items[i].payer for i in live})
            payer_of_code = {agent_account_code(a, m): (a, m) for a, m in payers}
            rows = await conn.fetch(
                "SELECT acc.id, acc.code, acc.balance, a.credit_limit FROM accounts acc "
                "JOIN agents a ON a.id = acc.agent_id WHERE acc.code = ANY($1::text[]) "
                "ORDER BY acc.id FOR UPDATE OF acc",
                list(payer_of_code),
            )
            account_of = {payer_of_code[r["code"]]: r["id"] for r in rows}
            balance = {payer_of_code[r["code"]]: r["balance"] for r in rows}
            limit = {payer_of_code[r["code"]]: r["credit_limit"] for r in rows}
            accepted: list[int] = []
            for i in live:
                item = items[i]
                agent = item.payer
                if agent not in account_of:
                    results[i] = Recorded(Outcome.INSUFFICIENT_BALANCE, balance_after=0)
                    continue
                # Debit-positive: the agent's funds are -balance; never past the credit limit.
                if balance[agent] + item.amount > limit[agent]:
                    results[i] = Recorded(
                        Outcome.INSUFFICIENT_BALANCE, balance_after=-balance[agent]
                    )
                    continue
                balance[agent] += item.amount
                accepted.append(i)

            # 2. Issuances; a conflict on (agent, Idempotency-Key) is a committed retry.
            public_ids = {i: new_public_id() for i in accepted}
            inserted = await conn.fetch(
                "INSERT INTO issuances (public_id, agent_id, api_key_id, idempotency_key, "
                "request_hash, product_id, sku, quantity, unit_price, amount, currency, reference, "
                "holder, mode) "
                "SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], "
                "$5::bytea[], $6::bigint[], $7::text[], $8::int[], $9::bigint[], $10::bigint[], "
                "$11::text[], $12::text[], $13::text[], $14::text[]) "
                "ON CONFLICT DO NOTHING "
                "RETURNING id, public_id, created_at",
                [public_ids[i] for i in accepted],
                [items[i].agent_id for i in accepted],
                [items[i].api_key_id for i in accepted],
                [items[i].idempotency_key for i in accepted],
                [items[i].request_hash for i in accepted],
                [items[i].product_id for i in accepted],
                [items[i].sku for i in accepted],
                [items[i].quantity for i in accepted],
                [items[i].unit_price for i in accepted],
                [items[i].amount for i in accepted],
                [items[i].currency for i in accepted],
                [items[i].reference for i in accepted],
                [items[i].holder for i in accepted],
                [items[i].mode for i in accepted],
            )
            by_public = {r["public_id"]: r for r in inserted}
            committed: list[int] = []
            for i in accepted:
                row = by_public.get(public_ids[i])
                if row is None:
                    results[i] = Recorded(Outcome.REPLAY)
                    balance[items[i].payer] -= items[i].amount
                else:
                    committed.append(i)
            if not committed:
                return [r if r is not None else Recorded(Outcome.REPLAY) for r in results]

            # 3. The guard: every key must still be available, and of the right product.
            key_ids: list[int] = []
            key_issuance: list[int] = []
            key_product: list[int] = []
            owner_of: dict[int, int] = {}
            for i in committed:
                issuance_id = by_public[public_ids[i]]["id"]
                for entry in items[i].entry_ids:
                    key_ids.append(entry)
                    key_issuance.append(issuance_id)
                    key_product.append(items[i].product_id)
                    owner_of[entry] = i
            updated = await conn.fetch(
                "UPDATE card_keys c SET state = 'issued', issued_to = u.iss, issued_at = now() "
                "FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, iss, product) "
                "WHERE c.id = u.id AND c.product_id = u.product AND c.state = 'available' "
                "RETURNING c.id, c.batch_id",
                key_ids,
                key_issuance,
                key_product,
            )
            if len(updated) != len(set(key_ids)) or len(key_ids) != len(set(key_ids)):
                missing = set(key_ids) - {r["id"] for r in updated}
                duplicated = {k for k in key_ids if key_ids.count(k) > 1}
                bad = missing | duplicated
                raise _GuardMismatch({owner_of[k] for k in bad}, bad)

            # 4. Keys of each issuance, journal entries and balances.
            positions: list[int] = []
            for i in committed:
                positions.extend(range(len(items[i].entry_ids)))
            await conn.execute(
                "INSERT INTO issuance_keys (issuance_id, position, card_key_id) "
                "SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::bigint[])",
                key_issuance,
                positions,
                key_ids,
            )
            await self._journal(conn, items, committed, public_ids, account_of, revenue)

            batch_ids = {r["id"]: r["batch_id"] for r in updated}
            expiry_rows = await conn.fetch(
                "SELECT id, expires_at FROM batches WHERE id = ANY($1::bigint[])",
                list(set(batch_ids.values())),
            )
            batch_expiry = {r["id"]: r["expires_at"] for r in expiry_rows}
        for i in committed:
            row = by_public[public_ids[i]]
            results[i] = Recorded(
                Outcome.COMMITTED,
                issuance_id=row["id"],
                public_id=row["public_id"],
                created_at=row["created_at"],
                expires_at={e: batch_expiry.get(batch_ids[e]) for e in items[i].entry_ids},
                balance_after=-balance[items[i].payer],
                spendable_after=limit[items[i].payer] - balance[items[i].payer],
            )
        return [r if r is not None else Recorded(Outcome.REPLAY) for r in results]

    @staticmethod
    async def _journal(
        conn: Any,
        items: list[PendingIssuance],
        committed: list[int],
        public_ids: dict[int, str],
        account_of: dict[tuple[int, str], int],
        revenue: dict[tuple[str, str], int],
    ) -> None:
        paid = [i for i in committed if items[i].amount > 0]
        if not paid:
            return
        entries = await conn.fetch(
            "INSERT INTO journal_entries (kind, reference) "
            "SELECT 'issuance', r FROM unnest($1::text[]) AS r RETURNING id, reference",
            [public_ids[i] for i in paid],
        )
        entry_of = {r["reference"]: r["id"] for r in entries}
        line_entry: list[int] = []
        line_account: list[int] = []
        line_amount: list[int] = []
        delta: dict[int, int] = defaultdict(int)
        for i in paid:
            entry = entry_of[public_ids[i]]
            debit_account = account_of[items[i].payer]
            credit_account = revenue[(items[i].currency, items[i].mode)]
            amount = items[i].amount
            line_entry += [entry, entry]
            line_account += [debit_account, credit_account]
            line_amount += [amount, -amount]
            delta[debit_account] += amount
            delta[credit_account] -= amount
        await conn.execute(
            "INSERT INTO journal_lines (entry_id, account_id, amount) "
            "SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])",
            line_entry,
            line_account,
            line_amount,
        )
        ordered = sorted(delta.items())
        await conn.execute(
            "UPDATE accounts a SET balance = a.balance + d.delta "
            "FROM unnest($1::bigint[], $2::bigint[]) AS d(id, delta) WHERE a.id = d.id",
            [account for account, _ in ordered],
            [amount for _, amount in ordered],
        )


class _GuardMismatch(Exception):
    def __init__(self, positions: set[int], card_key_ids: set[int]) -> None:
        super().__init__("card keys not available at commit")
        self.positions = positions
        self.card_key_ids = card_key_ids
