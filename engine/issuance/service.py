"""The issuance hot path.

authenticate (api) -> idempotency -> visibility and price -> balance check -> take (Redis,
Rust, coalesced) -> group commit (PostgreSQL) -> decrypt (Rust) -> respond.

The pool holder of a request is derived from (agent, Idempotency-Key), so a retry takes
the very same entries from Redis, and the unique (agent, Idempotency-Key) row in
PostgreSQL turns the retry into a replay of the committed answer. Plaintext exists only
after the commit (invariant 2).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from engine import audit
from engine._core import (
    CryptoError,
    OutOfStock,
    Overloaded,
    Pool,
    PoolUnavailable,
)
from engine.crypto.keyring import Keyring
from engine.distribution.ancestry import AncestryCache
from engine.errors import CommonError, DomainError
from engine.inventory.pools import ensure_present, pool_name
from engine.issuance.errors import IssuanceError
from engine.issuance.recorder import GroupCommitRecorder, Outcome, PendingIssuance, Recorded
from engine.issuance.terms import SaleTerms, TermsCache, below_cost_basis
from engine.ledger.service import agent_account_code
from engine.metrics import ISSUANCE_LATENCY, ISSUANCES
from engine.principals import AgentKey

log = structlog.get_logger(__name__)

BALANCE_TTL_S = 1.0
# Failures of the connection to PostgreSQL (not of a statement): retryable, nothing done.
STORE_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)


@dataclass(frozen=True)
class IssuedKey:
    code: str
    expires_at: datetime | None


@dataclass(frozen=True)
class Issuance:
    public_id: str
    sku: str
    quantity: int
    amount: int
    currency: str
    reference: str | None
    keys: list[IssuedKey]
    created_at: datetime
    # "refunded" once an operator refunded it (engine/issuance/refunds.py).
    status: str = "issued"


def holder_for(agent_id: int, idempotency_key: str, mode: str = "live") -> str:
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    # A test key's request with the same Idempotency-Key is another request.
    return f"iss:{agent_id}:test:{digest}" if mode == "test" else f"iss:{agent_id}:{digest}"


class BalanceCache:
    """Each agent's spendable funds (balance + credit limit), kept at most a second: a
    cheap pre-check so an agent without funds takes nothing from the pool. The commit
    re-checks under a row lock; this only saves work.

    A value read from the database answers both ways for its second. A value a commit
    reported (`update`) only answers "enough": a shortfall is read again, so a deposit
    made right after a purchase is never hidden by it."""

    def __init__(self, ttl_s: float = BALANCE_TTL_S) -> None:
        self._ttl_s = ttl_s
        # (agent, mode) -> (expiry, spendable, read from the database)
        self._funds: dict[tuple[int, str], tuple[float, int, bool]] = {}

    async def covers(
        self, db: asyncpg.Pool, agent_id: int, amount: int, mode: str = "live"
    ) -> bool:
        cached = self._funds.get((agent_id, mode))
        if cached is not None and cached[0] > time.monotonic():
            if cached[1] >= amount:
                return True
            if cached[2]:
                return False
        return await self.spendable(db, agent_id, mode) >= amount

    async def spendable(self, db: asyncpg.Pool, agent_id: int, mode: str = "live") -> int:
        now = time.monotonic()
        cached = self._funds.get((agent_id, mode))
        if cached is not None and cached[0] > now and cached[2]:
            return cached[1]
        funds: int | None = await db.fetchval(
            "SELECT a.credit_limit - acc.balance FROM agents a JOIN accounts acc "
            "ON acc.code = $2 WHERE a.id = $1",
            agent_id,
            agent_account_code(agent_id, mode),
        )
        spendable = funds or 0
        self._funds[(agent_id, mode)] = (now + self._ttl_s, spendable, True)
        return spendable

    def update(self, agent_id: int, spendable: int, mode: str = "live") -> None:
        """What a commit saw under the agent's row lock; trusted only when it is enough."""
        self._funds[(agent_id, mode)] = (time.monotonic() + self._ttl_s, spendable, False)

    def forget(self, agent_id: int) -> None:
        self._funds.pop((agent_id, "live"), None)
        self._funds.pop((agent_id, "test"), None)


class IssuanceService:
    def __init__(
        self,
        db: asyncpg.Pool,
        pool: Pool,
        keyring: Keyring,
        *,
        recorder: GroupCommitRecorder | None = None,
        terms: TermsCache | None = None,
        balances: BalanceCache | None = None,
        ancestry: AncestryCache | None = None,
    ) -> None:
        self._db = db
        self._pool = pool
        self._keyring = keyring
        self._recorder = recorder or GroupCommitRecorder(db)
        self._terms = terms or TermsCache()
        self._balances = balances or BalanceCache()
        self._ancestry = ancestry or AncestryCache()

    @property
    def balances(self) -> BalanceCache:
        return self._balances

    @property
    def ancestry(self) -> AncestryCache:
        return self._ancestry

    @property
    def terms(self) -> TermsCache:
        return self._terms

    async def close(self) -> None:
        await self._recorder.close()

    async def issue(
        self,
        agent: AgentKey,
        *,
        sku: str,
        quantity: int,
        reference: str | None,
        idempotency_key: str,
        request_hash: bytes,
    ) -> Issuance:
        started = time.perf_counter()
        result = "error"
        try:
            issuance = await self._issue(
                agent, sku, quantity, reference, idempotency_key, request_hash
            )
        except DomainError as exc:
            result = str(exc.code)
            raise
        else:
            result = "issued"
            return issuance
        finally:
            ISSUANCES.labels(result).inc()
            ISSUANCE_LATENCY.observe(time.perf_counter() - started)

    async def _issue(
        self,
        agent: AgentKey,
        sku: str,
        quantity: int,
        reference: str | None,
        idempotency_key: str,
        request_hash: bytes,
    ) -> Issuance:
        # The level's price for this quantity (tiers), a parent's price, the cost floor.
        terms, price = await self._terms.price(
            self._db, agent.level_id, agent.agent_id, sku, quantity
        )
        amount = price.amount
        mode = agent.mode
        if not price.covers_cost_basis:
            replay = await self._stored(agent.agent_id, idempotency_key, mode)
            if replay is not None:
                return await self._replay(agent.agent_id, replay, request_hash)
            raise below_cost_basis(sku)
        # Before the take: a tree priced out of order refuses the sale with nothing taken.
        # Sandbox purchases settle no commissions: nobody earns from test money.
        commissions = (
            await self._ancestry.shares(self._db, agent.agent_id, sku, price.unit_price, quantity)
            if mode == "live"
            else ()
        )
        if amount > 0 and not await self._balances.covers(self._db, agent.agent_id, amount, mode):
            # A retry of a committed request must still replay, whatever the balance now.
            replay = await self._stored(agent.agent_id, idempotency_key, mode)
            if replay is not None:
                return await self._replay(agent.agent_id, replay, request_hash)
            raise _insufficient(amount)

        holder = holder_for(agent.agent_id, idempotency_key, mode)
        pool = pool_name(sku, mode)
        entries = await self._take(sku, holder, quantity, mode)
        pending = PendingIssuance(
            agent_id=agent.agent_id,
            api_key_id=agent.key_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            product_id=terms.product_id,
            sku=sku,
            unit_price=price.unit_price,
            currency=terms.currency,
            reference=reference,
            holder=holder,
            entry_ids=[entry_id for entry_id, _ in entries],
            commissions=commissions,
            mode=mode,
        )
        try:
            recorded = await self._recorder.record(pending)
        except BaseException as exc:
            # Nothing was committed: the keys go back for the next buyer, whatever failed.
            await self._give_back(pool, holder)
            if isinstance(exc, STORE_CONNECTION_ERRORS):
                log.error("issuance_commit_failed", sku=sku, error=type(exc).__name__)
                raise DomainError(
                    IssuanceError.DATABASE_UNAVAILABLE,
                    "The database is unavailable; nothing was issued. Retry shortly.",
                    retry_after=1,
                ) from None
            raise
        return await self._finish(agent, terms, holder, entries, pending, recorded)

    async def _finish(
        self,
        agent: AgentKey,
        terms: SaleTerms,
        holder: str,
        entries: list[tuple[int, bytes]],
        pending: PendingIssuance,
        recorded: Recorded,
    ) -> Issuance:
        pool = pool_name(terms.sku, pending.mode)
        if recorded.spendable_after is not None:
            # Without this, every commit emptied the cache and the next request of the
            # agent paid a database round trip for its pre-check (one per issuance in a sale).
            self._balances.update(agent.agent_id, recorded.spendable_after, pending.mode)
        elif recorded.balance_after is not None:
            self._balances.forget(agent.agent_id)
        if recorded.outcome is Outcome.COMMITTED:
            assert recorded.public_id is not None
            assert recorded.created_at is not None
            codes = self._decrypt(terms.sku, entries)
            log.debug(
                "issued",
                issuance=recorded.public_id,
                sku=terms.sku,
                entry_ids=pending.entry_ids,
                amount=pending.amount,
            )
            return Issuance(
                public_id=recorded.public_id,
                sku=terms.sku,
                quantity=pending.quantity,
                amount=pending.amount,
                currency=terms.currency,
                reference=pending.reference,
                keys=[
                    IssuedKey(code, recorded.expires_at.get(entry_id))
                    for (entry_id, _), code in zip(entries, codes, strict=True)
                ],
                created_at=recorded.created_at,
            )
        if recorded.outcome is Outcome.INSUFFICIENT_BALANCE:
            await self._give_back(pool, holder)
            raise _insufficient(pending.amount)
        if recorded.outcome is Outcome.REPLAY:
            stored = await self._stored(agent.agent_id, pending.idempotency_key, pending.mode)
            if stored is None:  # pragma: no cover - the conflicting row cannot vanish
                raise DomainError(CommonError.UNAVAILABLE, "Retry shortly.", retry_after=1)
            stored_ids = await self._db.fetch(
                "SELECT card_key_id FROM issuance_keys WHERE issuance_id = $1", stored
            )
            if {r["card_key_id"] for r in stored_ids} != set(pending.entry_ids):
                # Redis had forgotten the first attempt, so this one took other entries;
                # they were never committed and go back.
                await self._give_back(pool, holder)
            return await self._replay(agent.agent_id, stored, pending.request_hash)
        # Integrity alarm: some entries are issued already (Redis was rebuilt while they
        # were in flight). They leave circulation; the rest go back, and a retry with the
        # same Idempotency-Key takes fresh entries.
        await self._give_back(pool, holder, drop=recorded.unavailable)
        raise DomainError(
            IssuanceError.INTEGRITY_ALARM,
            "Issuance refused by an integrity check; nothing was delivered or charged.",
            retry_after=1,
        )

    async def _take(
        self, sku: str, holder: str, quantity: int, mode: str
    ) -> list[tuple[int, bytes]]:
        pool = pool_name(sku, mode)
        for attempt in (1, 2):
            try:
                return await self._pool.take(pool, holder, quantity)
            except OutOfStock:
                # An empty pool may be a lost one (Redis flushed or replaced): rebuild it
                # from PostgreSQL once before saying no.
                if attempt == 2 or not await ensure_present(self._db, self._pool, sku, mode):
                    raise DomainError(
                        IssuanceError.OUT_OF_STOCK,
                        f"Not enough stock of {sku} for {quantity}; nothing was issued.",
                    ) from None
            except PoolUnavailable:
                raise DomainError(
                    IssuanceError.POOL_UNAVAILABLE,
                    "The key pool is unavailable; nothing was issued. Retry shortly.",
                    retry_after=1,
                ) from None
            except Overloaded:
                raise DomainError(
                    IssuanceError.OVERLOADED,
                    "Too many requests are waiting for this product; retry shortly.",
                    retry_after=1,
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _give_back(self, pool: str, holder: str, drop: Iterable[int] = ()) -> None:
        try:
            await self._pool.restore(pool, holder, drop=list(drop))
        except Exception as exc:
            log.warning("pool_restore_failed", pool=pool, error=type(exc).__name__)

    def _decrypt(self, sku: str, entries: list[tuple[int, bytes]]) -> list[str]:
        try:
            return self._keyring.cipher.decrypt_many(sku, entries)
        except CryptoError:
            log.error("decrypt_failed", sku=sku, entry_ids=[e for e, _ in entries])
            raise DomainError(
                IssuanceError.INTEGRITY_ALARM,
                "Issued keys could not be decrypted; the operator has been alerted.",
            ) from None

    async def _stored(self, agent_id: int, idempotency_key: str, mode: str) -> int | None:
        issuance_id: int | None = await self._db.fetchval(
            "SELECT id FROM issuances WHERE agent_id = $1 AND idempotency_key = $2 AND mode = $3",
            agent_id,
            idempotency_key,
            mode,
        )
        return issuance_id

    async def _replay(self, agent_id: int, issuance_id: int, request_hash: bytes) -> Issuance:
        row = await self._db.fetchrow(
            "SELECT request_hash FROM issuances WHERE id = $1", issuance_id
        )
        assert row is not None
        if row["request_hash"] != request_hash:
            raise DomainError(
                CommonError.IDEMPOTENCY_CONFLICT,
                "This Idempotency-Key was used with a different request.",
            )
        return await self._load(agent_id, issuance_id)

    async def reveal(
        self, agent_id: int, public_id: str, actor: str, mode: str = "live"
    ) -> Issuance:
        """An issuance with its keys, for its owner only, and only to a key of the mode it
        was made in; every reveal is audited."""
        issuance_id: int | None = await self._db.fetchval(
            "SELECT id FROM issuances WHERE public_id = $1 AND agent_id = $2 AND mode = $3",
            public_id,
            agent_id,
            mode,
        )
        if issuance_id is None:
            raise DomainError(IssuanceError.ISSUANCE_NOT_FOUND, "No such issuance.")
        issuance = await self._load(agent_id, issuance_id)
        async with self._db.acquire() as conn:
            await audit.record(conn, actor, "issuance.revealed", f"issuance:{public_id}")
        return issuance

    async def _load(self, agent_id: int, issuance_id: int) -> Issuance:
        row = await self._db.fetchrow(
            "SELECT public_id, sku, quantity, amount, currency, reference, created_at, "
            "refunded_at FROM issuances WHERE id = $1 AND agent_id = $2",
            issuance_id,
            agent_id,
        )
        if row is None:
            raise DomainError(IssuanceError.ISSUANCE_NOT_FOUND, "No such issuance.")
        keys = await self._db.fetch(
            "SELECT k.id, k.ciphertext, b.expires_at FROM issuance_keys ik "
            "JOIN card_keys k ON k.id = ik.card_key_id JOIN batches b ON b.id = k.batch_id "
            "WHERE ik.issuance_id = $1 ORDER BY ik.position",
            issuance_id,
        )
        codes = self._decrypt(row["sku"], [(k["id"], k["ciphertext"]) for k in keys])
        return Issuance(
            public_id=row["public_id"],
            sku=row["sku"],
            quantity=row["quantity"],
            amount=row["amount"],
            currency=row["currency"],
            reference=row["reference"],
            keys=[IssuedKey(code, k["expires_at"]) for code, k in zip(codes, keys, strict=True)],
            created_at=row["created_at"],
            status="issued" if row["refunded_at"] is None else "refunded",
        )


def _insufficient(amount: int) -> DomainError:
    return DomainError(
        IssuanceError.INSUFFICIENT_BALANCE,
        f"The balance does not cover {amount}; nothing was issued or charged.",
    )
