"""Group commit: every in-flight issuance of this worker is recorded in one transaction.

While one flush is committing, new issuances queue; the next flush takes all of them (no
timer: batches grow with load, a lone request is committed at once). A flush is one call
of the SQL function `kami_record_issuances` (migration 0014), one round trip that is its
own transaction, with `synchronous_commit` on, so a key is visible to its buyer only once
durable. Inside it, in this order:
1. the accounts touched are locked in id order and each issuance's debit is checked
   against the account's balance and credit limit; one that does not fit is rejected
   (its keys go back);
2. issuances are inserted; one whose (agent, Idempotency-Key) already exists is a retry of
   a committed request and is answered from that record;
3. the card keys are marked issued with a state guard — `state = 'available'` — and the
   updated row count must match: a key that is not available is an integrity alarm, the
   statement fails (nothing of the flush is kept), the issuance it belongs to is dropped,
   nothing of it is delivered, and the flush is retried without it;
4. issuance keys, journal entries (buyer debit, commission shares, revenue credit) and
   account balances.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

import asyncpg
import structlog

from engine.distribution.ancestry import CommissionShare
from engine.ledger.service import (
    AccountKind,
    agent_account_code,
    ensure_account,
    held_account_code,
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
    # The account the amount is debited from; empty: the agent's prepaid balance.
    debit_account: str = ""
    # What the agent's ancestors earn on this issuance (credited out of the amount; the
    # rest is revenue); empty for a top-level agent.
    commissions: tuple[CommissionShare, ...] = ()
    # "test": a sandbox key's issuance, paid from the agent's test balance.
    mode: str = "live"

    def __post_init__(self) -> None:
        if not self.debit_account:
            self.debit_account = agent_account_code(self.agent_id, self.mode)

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
        # Commission accounts (`agent:N:balance` / `agent:N:held`) by code. Created outside
        # the flush's transaction, so an id cached here never belongs to a rolled-back row.
        self._commission_accounts: dict[str, int] = {}

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
        # The outer loop: requests that arrived while the connection was being released.
        while self._queue:
            await self._drain()

    async def _drain(self) -> None:
        # One connection for the whole busy period: every release to the pool costs a
        # reset round trip, which under load would be paid once per flush.
        conn: Any = None
        try:
            while self._queue:
                batch = self._queue[: self._max_flush]
                del self._queue[: self._max_flush]
                started = asyncio.get_running_loop().time()
                try:
                    if conn is None:
                        conn = await self._db.acquire()
                    results = await self._flush(conn, [slot.item for slot in batch])
                except Exception as exc:
                    for slot in batch:
                        if not slot.future.done():
                            slot.future.set_exception(exc)
                    if conn is not None and not isinstance(exc, asyncpg.PostgresError):
                        # Possibly broken: the pool checks it and replaces it if need be.
                        await self._release(conn)
                        conn = None
                    continue
                FLUSH_SIZE.observe(len(batch))
                FLUSH_LATENCY.observe(asyncio.get_running_loop().time() - started)
                for slot, result in zip(batch, results, strict=True):
                    if not slot.future.done():
                        slot.future.set_result(result)
        finally:
            if conn is not None:
                await self._release(conn)

    async def _release(self, conn: Any) -> None:
        try:
            await self._db.release(conn)
        except Exception as exc:  # a dead connection: the pool has dropped it already
            log.warning("recorder_release_failed", error=type(exc).__name__)

    async def _flush(self, conn: Any, items: list[PendingIssuance]) -> list[Recorded]:
        alarmed: dict[int, frozenset[int]] = {}
        while True:
            try:
                return await self._flush_once(conn, items, alarmed)
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

    async def _commission_account(self, conn: Any, share: CommissionShare, currency: str) -> int:
        code = (
            held_account_code(share.agent_id)
            if share.hold_days
            else agent_account_code(share.agent_id)
        )
        account = self._commission_accounts.get(code)
        if account is None:
            account = await ensure_account(
                conn, code, AccountKind.LIABILITY, currency=currency, agent_id=share.agent_id
            )
            self._commission_accounts[code] = account
        return account

    async def _flush_once(
        self, conn: Any, items: list[PendingIssuance], alarmed: dict[int, frozenset[int]]
    ) -> list[Recorded]:
        results: list[Recorded | None] = [
            Recorded(Outcome.INTEGRITY_ALARM, unavailable=alarmed[i]) if i in alarmed else None
            for i in range(len(items))
        ]
        live = [i for i in range(len(items)) if i not in alarmed]
        if not live:
            return [r if r is not None else Recorded(Outcome.REPLAY) for r in results]
        batch = [items[i] for i in live]
        revenue = {
            (c, m): await self._revenue_account(conn, c, m)
            for c, m in {(i.currency, i.mode) for i in batch}
        }
        public_ids = [new_public_id() for _ in batch]
        key_item = [n for n, item in enumerate(batch, 1) for _ in item.entry_ids]
        key_ids = [entry for item in batch for entry in item.entry_ids]
        shares = [(n, item, share) for n, item in enumerate(batch, 1) for share in item.commissions]
        share_accounts = [
            await self._commission_account(conn, share, item.currency) for _, item, share in shares
        ]
        try:
            # Outside a transaction block: the one statement is its own transaction,
            # committed (and flushed to disk) before the rows come back.
            rows = await conn.fetch(
                _RECORD_ISSUANCES,
                public_ids,
                [i.agent_id for i in batch],
                [i.api_key_id for i in batch],
                [i.idempotency_key for i in batch],
                [i.request_hash for i in batch],
                [i.product_id for i in batch],
                [i.sku for i in batch],
                [i.quantity for i in batch],
                [i.unit_price for i in batch],
                [i.amount for i in batch],
                [i.currency for i in batch],
                [i.reference for i in batch],
                [i.holder for i in batch],
                [i.debit_account for i in batch],
                [revenue[(i.currency, i.mode)] for i in batch],
                key_item,
                key_ids,
                [n for n, _, _ in shares],
                share_accounts,
                [share.amount for _, _, share in shares],
                [share.agent_id for _, _, share in shares],
                [share.kind.value for _, _, share in shares],
                [share.hold_days or None for _, _, share in shares],
                [i.mode for i in batch],
            )
        except asyncpg.PostgresError as exc:
            if exc.sqlstate != GUARD_SQLSTATE:
                raise
            bad = {int(k) for k in (getattr(exc, "detail", None) or "").split(",") if k}
            positions = {live[n - 1] for n, k in zip(key_item, key_ids, strict=True) if k in bad}
            raise _GuardMismatch(positions, bad) from None
        for row in rows:
            n = row["item"] - 1
            item = batch[n]
            outcome = Outcome(row["outcome"])
            if outcome is Outcome.COMMITTED:
                results[live[n]] = Recorded(
                    Outcome.COMMITTED,
                    issuance_id=row["issuance_id"],
                    public_id=public_ids[n],
                    created_at=row["created_at"],
                    expires_at=dict(zip(item.entry_ids, row["expires"], strict=True)),
                    balance_after=row["funds"],
                    spendable_after=row["spendable"],
                )
            else:
                results[live[n]] = Recorded(
                    outcome,
                    balance_after=row["funds"] if row["funds"] is not None else 0,
                    spendable_after=row["spendable"],
                )
        return [r if r is not None else Recorded(Outcome.REPLAY) for r in results]


_RECORD_ISSUANCES = (
    "SELECT * FROM kami_record_issuances($1::text[], $2::bigint[], $3::bigint[], $4::text[], "
    "$5::bytea[], $6::bigint[], $7::text[], $8::int[], $9::bigint[], $10::bigint[], "
    "$11::text[], $12::text[], $13::text[], $14::text[], $15::bigint[], $16::int[], "
    "$17::bigint[], $18::int[], $19::bigint[], $20::bigint[], $21::bigint[], $22::text[], "
    "$23::int[], $24::text[])"
)
# Raised by kami_record_issuances when a key is no longer available (migration 0014).
GUARD_SQLSTATE = "KM001"


class _GuardMismatch(Exception):
    def __init__(self, positions: set[int], card_key_ids: set[int]) -> None:
        super().__init__("card keys not available at commit")
        self.positions = positions
        self.card_key_ids = card_key_ids
