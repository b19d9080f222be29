"""Storefront orders: order, pay, deliver — and expire, cancel, refund.

An order holds its keys in the pool (`reserve`, holder `ord:{order_no}`) for the payment
window. A verified payment confirms the hold and records the delivery in one PostgreSQL
transaction guarded by the order's status and by each key's state (`available` →
`issued`, the same guard as `/v1/issuances`); webhooks and the email go into the outbox in
that same transaction. Only after the commit can the buyer see the keys.

Money: a payment debits the provider's clearing account; the sale credits platform revenue
(and, for a sub-store, the agent's margin to its balance). Money that cannot buy keys — a
payment after the order expired and its stock was sold, a second payment — is credited to
refunds payable and flagged `refund_due` for an operator: never kept silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog

from engine import audit
from engine._core import HoldNotFound, OutOfStock, Pool
from engine.catalog.service import get_product
from engine.crypto.keyring import Keyring
from engine.distribution.commissions import AgentCost, Sale, Split, split_sale
from engine.distribution.levels import agent_quotes, agent_unit_cost, check_sale_floor
from engine.distribution.promoters import Promoter, promoter_for_order
from engine.errors import DomainError
from engine.inventory.pools import ensure_present, pool_name
from engine.issuance.errors import IssuanceError
from engine.ledger import commissions
from engine.ledger.service import (
    AccountKind,
    agent_account_code,
    ensure_account,
    post,
    revenue_account_code,
)
from engine.notify.outbox import emit_event, enqueue_email
from engine.orders.errors import OrderError
from engine.orders.stores import markup_of, retail_price
from engine.payments.base import (
    PaymentNotice,
    PaymentOrder,
    PaymentProvider,
    PaymentProviderError,
)
from engine.pricing.store import cost_basis
from engine.settings import Settings
from engine.storage.db import Connection

log = structlog.get_logger(__name__)

HOLDER_PREFIX = "ord:"
SANDBOX = "sandbox"
# The pool keeps an order's hold a little past `expires_at`, so a payment that lands at the
# last second still finds its keys; the sweeper releases holds of expired orders.
_HOLD_MARGIN_S = 120
_SWEEP_BATCH = 500
_LOOKUP_CODE_TTL_S = 600
# How far up the agent tree a sale's split reaches (the tree's own depth limit is lower).
_MAX_TREE_DEPTH = 32
_LOOKUP_CODE_TRIES = 5

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def contact_digest(kind: str, contact: str) -> bytes:
    return hashlib.sha256(f"{kind}:{contact.strip().lower()}".encode()).digest()


def new_order_no(now: datetime) -> str:
    # Time first (sortable, readable by support), then 64 random bits: not guessable.
    return now.strftime("%Y%m%d%H%M%S") + secrets.token_hex(8).upper()


@dataclass(frozen=True)
class NewOrder:
    sku: str
    quantity: int
    contact_kind: str  # "email" | "phone"
    contact: str
    payment_method: str
    store: str | None = None
    client_ip: str | None = None
    device: str | None = None
    locale: str = "zh-CN"
    # A promoter's link code: the order is attributed to it and pays its commission.
    promoter: str | None = None
    # "test": placed with a test key — test stock, the sandbox provider, sandbox money.
    mode: str = "live"


@dataclass(frozen=True)
class CreatedOrder:
    order_no: str
    status: str
    amount: int
    currency: str
    pay_url: str | None
    qr_code: str | None
    expires_at: datetime
    lookup_token: str


@dataclass(frozen=True)
class OrderView:
    order_no: str
    status: str
    sku: str
    quantity: int
    amount: int
    currency: str
    expires_at: datetime
    created_at: datetime
    paid_at: datetime | None
    delivered_at: datetime | None
    keys: list[str] | None


@dataclass(frozen=True)
class PaymentOutcome:
    """What a verified callback did: `applied` (delivered or flagged), or a `replay`."""

    order_no: str
    result: str  # delivered | refund_due | replay | ignored


class OrderService:
    def __init__(
        self,
        db: asyncpg.Pool,
        pool: Pool,
        keyring: Keyring,
        providers: Mapping[str, PaymentProvider],
        settings: Settings,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self._db = db
        self._pool = pool
        self._keyring = keyring
        self._providers = providers
        self._settings = settings
        self._clock = clock

    @property
    def providers(self) -> Mapping[str, PaymentProvider]:
        return self._providers

    # ------------------------------------------------------------------ create

    async def create(self, new: NewOrder) -> CreatedOrder:
        provider = self._providers.get(new.payment_method)
        if new.mode == "test" and new.payment_method != SANDBOX:
            # Test stock is never sold for real money.
            raise DomainError(
                OrderError.PAYMENT_METHOD_UNAVAILABLE,
                "Test orders pay through the sandbox provider only.",
                enabled=[SANDBOX] if SANDBOX in self._providers else [],
            )
        if provider is None:
            raise DomainError(
                OrderError.PAYMENT_METHOD_UNAVAILABLE,
                f"Payment method {new.payment_method} is not enabled here.",
                enabled=sorted(self._providers),
            )
        now = self._clock()
        order_no = new_order_no(now)
        token = secrets.token_urlsafe(24)
        holder = HOLDER_PREFIX + order_no
        expires_at = now + timedelta(seconds=self._settings.order_payment_window_s)
        digest = contact_digest(new.contact_kind, new.contact)
        client_ip = ipaddress.ip_address(new.client_ip) if new.client_ip else None
        async with self._db.acquire() as conn:
            product = await get_product(conn, new.sku)
            if product.status != "active":
                raise DomainError(IssuanceError.PRODUCT_UNAVAILABLE, f"{new.sku} is not on sale.")
            store_agent, unit_price, agent_cost = await self._price(conn, product.id, new)
            amount = unit_price * new.quantity
            promoter = (
                await promoter_for_order(conn, new.promoter, store_agent)
                if new.promoter is not None
                else None
            )
            split = (
                await self._split(
                    conn, product.id, product.price, store_agent, unit_price, new, promoter
                )
                if store_agent is not None or promoter is not None
                else None
            )
            async with conn.transaction():
                await self._check_caps(conn, digest, client_ip, new, now)
                await self._reserve(product.sku, holder, new.quantity, new.mode)
                try:
                    await conn.execute(
                        "INSERT INTO orders (order_no, lookup_hash, product_id, sku, quantity, "
                        "unit_price, amount, currency, store_agent_id, agent_unit_cost, "
                        "contact_kind, contact, contact_hash, client_ip, device, locale, "
                        "payment_method, holder, expires_at, created_at, promoter_agent_id, "
                        "mode) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
                        "$14, $15, $16, $17, $18, $19, $20, $21, $22)",
                        order_no,
                        token_hash(token),
                        product.id,
                        product.sku,
                        new.quantity,
                        unit_price,
                        amount,
                        product.currency,
                        store_agent,
                        agent_cost,
                        new.contact_kind,
                        new.contact,
                        digest,
                        client_ip,
                        new.device,
                        new.locale,
                        new.payment_method,
                        holder,
                        expires_at,
                        now,
                        promoter.agent_id if promoter is not None else None,
                        new.mode,
                    )
                    if split is not None:
                        await _store_shares(conn, order_no, split)
                    await audit.record(conn, "buyer", "order.created", f"order:{order_no}")
                except BaseException:
                    await self._release_quietly(pool_name(product.sku, new.mode), holder)
                    raise
        try:
            pay = await provider.create(
                PaymentOrder(
                    order_no=order_no,
                    amount=amount,
                    currency=product.currency,
                    subject=f"{product.name} x{new.quantity}",
                    expires_at=expires_at,
                    client_ip=new.client_ip,
                )
            )
        except PaymentProviderError as exc:
            log.error("payment_create_failed", provider=provider.name, error=str(exc))
            await self._close(order_no, "cancelled", actor="system")
            raise DomainError(
                OrderError.PAYMENT_PROVIDER_UNAVAILABLE,
                "The payment provider did not answer; the order was cancelled. Try again.",
                retry_after=5,
            ) from None
        await self._db.execute(
            "UPDATE orders SET pay_url = $2, qr_code = $3 WHERE order_no = $1",
            order_no,
            pay.pay_url,
            pay.qr_code,
        )
        return CreatedOrder(
            order_no=order_no,
            status="pending_payment",
            amount=amount,
            currency=product.currency,
            pay_url=pay.pay_url,
            qr_code=pay.qr_code,
            expires_at=expires_at,
            lookup_token=token,
        )

    async def _price(
        self, conn: Connection, product_id: int, new: NewOrder
    ) -> tuple[int | None, int, int | None]:
        """(store agent, unit price, the agent's unit cost): the product price, or the
        sub-store's retail price, never below what the agent pays for the key."""
        product_price: int = await conn.fetchval(
            "SELECT price FROM products WHERE id = $1", product_id
        )
        if new.store is None:
            return None, product_price, None
        row = await conn.fetchrow(
            "SELECT a.id, s.price AS retail, a.store_markup_bp, a.store_markup_amount, "
            "l.visible_skus FROM agents a "
            "JOIN agent_levels l ON l.id = a.level_id "
            "LEFT JOIN store_prices s ON s.agent_id = a.id AND s.product_id = $2 "
            "WHERE a.store_slug = $1 AND a.status = 'active'",
            new.store,
            product_id,
        )
        if row is None:
            raise DomainError(OrderError.STORE_NOT_FOUND, f"No store {new.store}.")
        if row["visible_skus"] is not None and new.sku not in row["visible_skus"]:
            raise DomainError(
                IssuanceError.PRODUCT_NOT_VISIBLE, f"Store {new.store} does not sell {new.sku}."
            )
        # What the agent pays for this quantity: its level's price and tiers, its parent's
        # price for it (engine.distribution.levels, the resolution every path uses).
        cost = await agent_unit_cost(conn, int(row["id"]), new.sku, new.quantity)
        # Its absolute price, else its cost for this quantity plus the store's markup.
        retail = retail_price(
            store_price=row["retail"], markup=markup_of(row), cost=cost, list_price=product_price
        )
        # Retail below cost is refused by the sale's split (`_split`), with every level.
        return int(row["id"]), int(retail), int(cost)

    async def _split(
        self,
        conn: Connection,
        product_id: int,
        product_price: int,
        store_agent: int | None,
        unit_price: int,
        new: NewOrder,
        promoter: Promoter | None = None,
    ) -> Split:
        """The sale's split up the store agent's tree (none for a direct sale), at today's
        level prices, with the promoter's commission; refused (before anyone pays) when a
        level's price is out of order or the commission exceeds the seller's margin."""
        rows = await conn.fetch(
            "WITH RECURSIVE chain AS ("
            " SELECT id, parent_id, 0 AS depth FROM agents WHERE id = $1"
            " UNION ALL SELECT a.id, a.parent_id, c.depth + 1 FROM agents a"
            " JOIN chain c ON a.id = c.parent_id WHERE c.depth < $2) "
            "SELECT id FROM chain ORDER BY depth",
            store_agent,
            _MAX_TREE_DEPTH,
        )
        path = [r["id"] for r in rows]
        quotes = await agent_quotes(conn, path, new.sku, new.quantity)
        # A batch dearer than a level's price, arrived after the price was set.
        check_sale_floor(quotes, new.sku)
        return split_sale(
            Sale(
                quantity=new.quantity,
                unit_price=unit_price,
                chain=tuple(AgentCost(a, quotes[a].unit_price) for a in path),
                cost_basis=await cost_basis(conn, product_id),
                promoter=promoter.terms if promoter is not None else None,
            )
        )

    async def _check_caps(
        self,
        conn: Connection,
        digest: bytes,
        client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        new: NewOrder,
        now: datetime,
    ) -> None:
        """At most N unpaid orders / units per contact, IP and device. Serialised per
        contact, IP and device with transaction locks, so parallel requests can't race it."""
        s = self._settings
        checks: list[tuple[str, str, Any, int, int | None]] = [
            ("contact", "contact_hash", digest, s.order_max_unpaid_per_contact,
             s.order_max_unpaid_units_per_contact),
        ]  # fmt: skip
        if client_ip is not None:
            checks.append(
                ("ip", "client_ip", client_ip, s.order_max_unpaid_per_ip,
                 s.order_max_unpaid_units_per_ip)
            )  # fmt: skip
        if new.device:
            checks.append(("device", "device", new.device, s.order_max_unpaid_per_device, None))
        for dimension, _, value, _, _ in checks:
            shown = value.hex() if isinstance(value, bytes) else str(value)
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"order-cap:{dimension}:{shown}",
            )
        for dimension, column, value, max_orders, max_units in checks:
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, coalesce(sum(quantity), 0) AS units FROM orders "  # noqa: S608
                f"WHERE status = 'pending_payment' AND expires_at > $2 AND {column} = $1",
                value,
                now,
            )
            assert row is not None
            if row["n"] + 1 > max_orders or (
                max_units is not None and row["units"] + new.quantity > max_units
            ):
                raise DomainError(
                    OrderError.RESERVATION_LIMIT,
                    f"Too many unpaid orders for this {dimension}: pay or cancel one first.",
                    retry_after=60,
                )

    async def _reserve(self, sku: str, holder: str, quantity: int, mode: str = "live") -> list[int]:
        ttl_ms = (self._settings.order_payment_window_s + _HOLD_MARGIN_S) * 1000
        pool = pool_name(sku, mode)
        try:
            entries = await self._pool.reserve(pool, holder, quantity, ttl_ms)
        except OutOfStock:
            # A pool Redis lost is rebuilt from PostgreSQL; then the stock is really known.
            if not await ensure_present(self._db, self._pool, sku, mode):
                raise DomainError(
                    IssuanceError.OUT_OF_STOCK, f"Not enough {sku} in stock."
                ) from None
            try:
                entries = await self._pool.reserve(pool, holder, quantity, ttl_ms)
            except OutOfStock:
                raise DomainError(
                    IssuanceError.OUT_OF_STOCK, f"Not enough {sku} in stock."
                ) from None
        return [entry_id for entry_id, _ in entries]

    async def _release_quietly(self, pool: str, holder: str) -> None:
        try:
            await self._pool.release(pool, holder)
        except Exception as exc:  # the hold's TTL returns the keys anyway
            log.warning("order_release_failed", pool=pool, error=type(exc).__name__)

    # ------------------------------------------------------------------ read

    async def lookup(self, order_no: str, token: str) -> OrderView:
        """The order for its lookup token; a wrong token is the same 404 as no order."""
        row = await self._db.fetchrow("SELECT * FROM orders WHERE order_no = $1", order_no)
        supplied = token_hash(token)
        expected = row["lookup_hash"] if row is not None else b"\0" * 32
        if not hmac.compare_digest(supplied, expected) or row is None:
            raise _not_found()
        keys = None
        if row["status"] == "delivered":
            keys = await self._reveal(row, actor="buyer")
        return _view(row, keys)

    async def reveal_by_link(self, order_no: str, link_token: str) -> OrderView:
        """Keys through a one-time, expiring link (the email's): a second use is a 404."""
        async with self._db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE reveal_links l SET used_at = $3 FROM orders o "
                "WHERE l.token_hash = $1 AND l.order_id = o.id AND o.order_no = $2 "
                "AND l.used_at IS NULL AND l.expires_at > $3 RETURNING o.*",
                token_hash(link_token),
                order_no,
                self._clock(),
            )
            if row is None or row["status"] != "delivered":
                raise _not_found()
            keys = await self._reveal(row, actor="reveal_link", conn=conn)
        return _view(row, keys)

    async def _reveal(
        self, order: asyncpg.Record, *, actor: str, conn: Connection | None = None
    ) -> list[str]:
        if conn is None:
            async with self._db.acquire() as own:
                return await self._reveal(order, actor=actor, conn=own)
        rows = await conn.fetch(
            "SELECT k.id, k.ciphertext FROM order_keys ok JOIN card_keys k "
            "ON k.id = ok.card_key_id WHERE ok.order_id = $1 ORDER BY ok.position",
            order["id"],
        )
        # Every reveal of plaintext keys is on record.
        await audit.record(
            conn, actor, "order.keys_revealed", f"order:{order['order_no']}", {"keys": len(rows)}
        )
        return self._keyring.cipher.decrypt_many(
            order["sku"], [(r["id"], r["ciphertext"]) for r in rows]
        )

    # ------------------------------------------------------------------ by contact

    async def send_lookup_code(
        self, redis: aioredis.Redis, contact: str, locale: str, namespace: str
    ) -> None:
        """Email a one-time code that lists the address's orders. The answer is the same
        whether the address has orders or not; only an address with orders gets a mail."""
        digest = contact_digest("email", contact).hex()
        # One code per address per minute, so nobody floods a stranger's inbox.
        if not await redis.set(f"{namespace}:lookup-sent:{digest}", 1, nx=True, ex=60):
            return
        has_orders = await self._db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM orders WHERE contact_hash = $1)",
            contact_digest("email", contact),
        )
        if not has_orders:
            return
        code = f"{secrets.randbelow(10**6):06d}"
        await redis.set(
            f"{namespace}:lookup-code:{digest}",
            hashlib.sha256(f"{digest}:{code}".encode()).hexdigest(),
            ex=_LOOKUP_CODE_TTL_S,
        )
        await redis.delete(f"{namespace}:lookup-tries:{digest}")
        async with self._db.acquire() as conn, conn.transaction():
            await enqueue_email(
                conn,
                contact,
                "order_lookup_code",
                locale,
                {"verification_code": code, "valid_minutes": _LOOKUP_CODE_TTL_S // 60},
            )

    async def orders_by_code(
        self, redis: aioredis.Redis, contact: str, code: str, namespace: str
    ) -> list[OrderView]:
        """The address's orders (keys included once delivered) for the code it was sent.
        A wrong code, an expired one and an address without orders are the same 404; five
        wrong tries burn the code."""
        digest = contact_digest("email", contact).hex()
        stored = await redis.get(f"{namespace}:lookup-code:{digest}")
        tries = await redis.incr(f"{namespace}:lookup-tries:{digest}")
        await redis.expire(f"{namespace}:lookup-tries:{digest}", _LOOKUP_CODE_TTL_S)
        given = hashlib.sha256(f"{digest}:{code}".encode()).hexdigest().encode()
        expected = stored if isinstance(stored, bytes) else b"-" * 64
        if tries > _LOOKUP_CODE_TRIES or not hmac.compare_digest(given, expected):
            if tries >= _LOOKUP_CODE_TRIES:
                await redis.delete(f"{namespace}:lookup-code:{digest}")
            raise _not_found()
        await redis.delete(f"{namespace}:lookup-code:{digest}")
        rows = await self._db.fetch(
            "SELECT * FROM orders WHERE contact_hash = $1 ORDER BY created_at DESC LIMIT 50",
            contact_digest("email", contact),
        )
        views = []
        for row in rows:
            keys = (
                await self._reveal(row, actor="buyer_code")
                if row["status"] == "delivered"
                else None
            )
            views.append(_view(row, keys))
        return views

    # ------------------------------------------------------------------ payment

    async def apply_payment(self, notice: PaymentNotice) -> PaymentOutcome:
        """A verified provider callback (or query result): deliver, or flag the money for a
        refund. Idempotent on (provider, trade no); safe under concurrent replays."""
        if not notice.paid:
            return PaymentOutcome(notice.order_no, "ignored")
        async with self._db.acquire() as conn:
            order = await conn.fetchrow("SELECT * FROM orders WHERE order_no = $1", notice.order_no)
            if order is None:
                raise _not_found()
            if order["mode"] == "test" and notice.provider != SANDBOX:
                log.error("test_order_paid_for_real", order_no=notice.order_no)
                raise DomainError(
                    OrderError.PAYMENT_REJECTED, "A test order is paid in the sandbox only."
                )
            if notice.amount != order["amount"] or notice.currency != order["currency"]:
                log.error(
                    "payment_mismatch",
                    order_no=notice.order_no,
                    provider=notice.provider,
                    amount=notice.amount,
                    expected=order["amount"],
                )
                raise DomainError(
                    OrderError.PAYMENT_MISMATCH,
                    "The payment's amount or currency is not the order's.",
                )
            entry_ids: list[int] | None = None
            if order["status"] in ("pending_payment", "expired", "cancelled"):
                entry_ids = await self._secure_keys(order)
            try:
                async with conn.transaction():
                    return await self._record_payment(conn, notice, entry_ids)
            except _IntegrityAlarm as alarm:
                # Keys PostgreSQL says are gone leave circulation; the rest go back, and the
                # provider's retry takes fresh ones.
                await self._restore_quietly(_pool_of(order), order["holder"], alarm.unavailable)
                raise
            except BaseException:
                if entry_ids:
                    await self._restore_quietly(_pool_of(order), order["holder"])
                raise

    async def _secure_keys(self, order: asyncpg.Record) -> list[int] | None:
        """The order's keys, issued to its holder in the pool: its hold confirmed, or — the
        hold gone (late payment) — fresh ones reserved and confirmed. None: out of stock."""
        holder, pool = order["holder"], _pool_of(order)
        try:
            return await self._pool.confirm(pool, holder)
        except HoldNotFound:
            pass
        try:
            await self._reserve(order["sku"], holder, order["quantity"], order["mode"])
        except DomainError as exc:
            if exc.code is IssuanceError.OUT_OF_STOCK:
                return None
            raise
        return await self._pool.confirm(pool, holder)

    async def _record_payment(
        self, conn: Connection, notice: PaymentNotice, entry_ids: list[int] | None
    ) -> PaymentOutcome:
        order = await conn.fetchrow(
            "SELECT * FROM orders WHERE order_no = $1 FOR UPDATE", notice.order_no
        )
        assert order is not None
        seen = await conn.fetchval(
            "SELECT id FROM payments WHERE provider = $1 AND trade_no = $2",
            notice.provider,
            notice.trade_no,
        )
        if seen is not None:
            # A replay (maybe concurrent, committed first): any keys confirmed above are
            # the same holder's, already this order's. Nothing to give back.
            return PaymentOutcome(order["order_no"], "replay")
        now = self._clock()
        subject = f"order:{order['order_no']}"
        deliverable = order["status"] in ("pending_payment", "expired", "cancelled")
        if not deliverable or entry_ids is None:
            # Money the order cannot use: a second payment, or one too late for the stock.
            await conn.execute(
                "INSERT INTO payments (order_id, provider, trade_no, amount, currency, status) "
                "VALUES ($1, $2, $3, $4, $5, 'refund_due')",
                order["id"],
                notice.provider,
                notice.trade_no,
                notice.amount,
                notice.currency,
            )
            await self._journal_unusable(conn, order, notice)
            if deliverable:
                await conn.execute(
                    "UPDATE orders SET status = 'paid', paid_at = $2, refund_due = true "
                    "WHERE id = $1",
                    order["id"],
                    now,
                )
                await emit_event(
                    conn, "order.paid", _event(order, "paid"), agent_id=order["store_agent_id"]
                )
            else:
                await conn.execute("UPDATE orders SET refund_due = true WHERE id = $1", order["id"])
            await audit.record(
                conn, "system", "order.refund_due", subject, {"provider": notice.provider}
            )
            log.error(
                "payment_needs_refund",
                order_no=order["order_no"],
                provider=notice.provider,
                status=order["status"],
            )
            return PaymentOutcome(order["order_no"], "refund_due")

        updated = await conn.fetch(
            "UPDATE card_keys SET state = 'issued', issued_at = $3 "
            "WHERE id = ANY($1::bigint[]) AND product_id = $2 AND state = 'available' "
            "RETURNING id",
            entry_ids,
            order["product_id"],
            now,
        )
        if len(updated) != len(set(entry_ids)) or len(entry_ids) != order["quantity"]:
            unavailable = sorted(set(entry_ids) - {r["id"] for r in updated})
            log.error("integrity_alarm", order_no=order["order_no"], unavailable=len(unavailable))
            raise _IntegrityAlarm(_pool_of(order), order["holder"], unavailable)
        await conn.execute(
            "INSERT INTO order_keys (order_id, position, card_key_id) "
            "SELECT $1, p - 1, k FROM unnest($2::bigint[]) WITH ORDINALITY AS u(k, p)",
            order["id"],
            entry_ids,
        )
        await conn.execute(
            "INSERT INTO payments (order_id, provider, trade_no, amount, currency, status) "
            "VALUES ($1, $2, $3, $4, $5, 'applied')",
            order["id"],
            notice.provider,
            notice.trade_no,
            notice.amount,
            notice.currency,
        )
        await self._journal_sale(conn, order, notice.provider, reverse=False)
        await conn.execute(
            "UPDATE orders SET status = 'delivered', paid_at = $2, delivered_at = $2, "
            "expires_at = greatest(expires_at, $2) WHERE id = $1",
            order["id"],
            now,
        )
        agent = order["store_agent_id"]
        await emit_event(conn, "order.paid", _event(order, "paid"), agent_id=agent)
        await emit_event(conn, "order.delivered", _event(order, "delivered"), agent_id=agent)
        if order["contact_kind"] == "email":
            await self._email_reveal_link(conn, order, now)
        await audit.record(
            conn, "system", "order.delivered", subject, {"provider": notice.provider}
        )
        return PaymentOutcome(order["order_no"], "delivered")

    async def _email_reveal_link(
        self, conn: Connection, order: asyncpg.Record, now: datetime
    ) -> None:
        link_token = secrets.token_urlsafe(24)
        link_expires = now + timedelta(seconds=self._settings.order_reveal_link_ttl_s)
        await conn.execute(
            "INSERT INTO reveal_links (token_hash, order_id, expires_at) VALUES ($1, $2, $3)",
            token_hash(link_token),
            order["id"],
            link_expires,
        )
        base = self._settings.public_base_url
        product_name = await conn.fetchval(
            "SELECT name FROM products WHERE id = $1", order["product_id"]
        )
        await enqueue_email(
            conn,
            order["contact"],
            "order_delivered",
            order["locale"],
            {
                "order_no": order["order_no"],
                "sku": order["sku"],
                "product_name": product_name,
                "quantity": order["quantity"],
                "reveal_url": f"{base}/v1/orders/{order['order_no']}/reveal?link={link_token}",
                "reveal_expires_at": link_expires.isoformat(),
                "lookup_url": f"{base}/v1/orders/{order['order_no']}",
            },
        )

    async def _accounts(
        self, conn: Connection, provider: str, currency: str, mode: str = "live"
    ) -> dict[str, int]:
        # Test orders move the sandbox's money only: accounts of their own, `platform:test_…`.
        test = "test_" if mode == "test" else ""
        return {
            "clearing": await ensure_account(
                conn, f"platform:{test}clearing:{provider}:{currency}", AccountKind.ASSET,
                currency=currency, mode=mode,
            ),
            "revenue": await ensure_account(
                conn, revenue_account_code(currency, mode), AccountKind.REVENUE,
                currency=currency, mode=mode,
            ),
            "payable": await ensure_account(
                conn, f"platform:{test}refunds_payable:{currency}", AccountKind.LIABILITY,
                currency=currency, mode=mode,
            ),
        }  # fmt: skip

    async def _journal_sale(
        self, conn: Connection, order: asyncpg.Record, provider: str, *, reverse: bool
    ) -> None:
        """The buyer's money into clearing; platform revenue, and for a sub-store the
        order's split: every agent up the tree credited its margin or differential to its
        balance at once (秒结), or to its held account when its level holds commissions.
        `reverse`: the refund, taking each commission back from where it is now."""
        amount = order["amount"]
        if amount == 0:
            return
        mode = order["mode"]
        acc = await self._accounts(conn, provider, order["currency"], mode)
        shares = await conn.fetch(
            "SELECT agent_id, kind, amount FROM order_shares WHERE order_id = $1 "
            "AND amount > 0 AND agent_id IS NOT NULL ORDER BY position",
            order["id"],
        )
        if reverse:
            await self._journal_refund(conn, order, acc, shares)
            return
        credits = await commissions.credit_lines(
            conn,
            [commissions.AgentShare(r["agent_id"], r["kind"], r["amount"]) for r in shares],
            order["currency"],
            self._clock(),
            mode=mode,
        )
        lines: list[tuple[int, int]] = [(acc["clearing"], amount)]
        lines += [(credit.account_id, -credit.share.amount) for credit in credits]
        credited = sum(credit.share.amount for credit in credits)
        if amount - credited > 0:
            lines.append((acc["revenue"], -(amount - credited)))
        entry = await post(conn, "order.sale", _merge(lines), reference=order["order_no"])
        if mode == "live":
            # Sandbox money is nobody's earnings: no commission records, no holds.
            await commissions.record(
                conn, "order", order["order_no"], entry, order["currency"], credits
            )

    async def _journal_refund(
        self,
        conn: Connection,
        order: asyncpg.Record,
        acc: dict[str, int],
        shares: Sequence[asyncpg.Record],
    ) -> None:
        amount = order["amount"]
        taken_back = await commissions.reverse(conn, "order", order["order_no"], self._clock())
        lines: list[tuple[int, int]] = [(acc["clearing"], -amount)]
        if taken_back or not shares:
            lines += [(account, value) for _, account, value in taken_back]
            credited = sum(value for _, _, value in taken_back)
        else:
            # A sandbox order, or one paid before commissions were recorded one by one:
            # the shares are in the agents' balances.
            credited = 0
            for share in shares:
                agent = await ensure_account(
                    conn,
                    agent_account_code(share["agent_id"], order["mode"]),
                    AccountKind.LIABILITY,
                    currency=order["currency"],
                    agent_id=share["agent_id"],
                    mode=order["mode"],
                )
                lines.append((agent, share["amount"]))
                credited += share["amount"]
        if amount - credited > 0:
            lines.append((acc["revenue"], amount - credited))
        entry = await post(conn, "order.refund", _merge(lines), reference=order["order_no"])
        if taken_back:
            await commissions.link_reversal(conn, [c for c, _, _ in taken_back], entry)

    async def _journal_unusable(
        self, conn: Connection, order: asyncpg.Record, notice: PaymentNotice
    ) -> None:
        if notice.amount == 0:
            return
        acc = await self._accounts(conn, notice.provider, notice.currency, order["mode"])
        await post(
            conn,
            "order.payment_unusable",
            [(acc["clearing"], notice.amount), (acc["payable"], -notice.amount)],
            reference=order["order_no"],
        )

    async def _restore_quietly(
        self, sku: str, holder: str, drop: Sequence[int] | None = None
    ) -> None:
        try:
            await self._pool.restore(sku, holder, drop=drop)
        except Exception as exc:  # the reconciler restores it later
            log.warning("order_restore_failed", sku=sku, error=type(exc).__name__)

    # ------------------------------------------------------------------ close

    async def cancel(self, order_no: str, token: str) -> OrderView:
        """The buyer gives up an unpaid order; its keys go back to the pool."""
        view = await self.lookup(order_no, token)
        if view.status != "pending_payment":
            raise DomainError(
                OrderError.INVALID_ORDER_STATE, f"A {view.status} order cannot be cancelled."
            )
        if not await self._close(order_no, "cancelled", actor="buyer"):
            raise DomainError(OrderError.INVALID_ORDER_STATE, "The order changed meanwhile.")
        return await self.lookup(order_no, token)

    async def _close(self, order_no: str, status: str, *, actor: str) -> bool:
        """pending_payment → expired | cancelled, then the hold goes back to the pool."""
        async with self._db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE orders SET status = $2, closed_at = $3 "
                "WHERE order_no = $1 AND status = 'pending_payment' RETURNING sku, holder, mode",
                order_no,
                status,
                self._clock(),
            )
            if row is None:
                return False
            await audit.record(conn, actor, f"order.{status}", f"order:{order_no}")
        await self._release_quietly(_pool_of(row), row["holder"])
        return True

    async def expire_due(self) -> int:
        """Expire unpaid orders past `expires_at`; returns how many."""
        rows = await self._db.fetch(
            "SELECT order_no FROM orders WHERE status = 'pending_payment' AND expires_at <= $1 "
            "ORDER BY expires_at LIMIT $2",
            self._clock(),
            _SWEEP_BATCH,
        )
        expired = 0
        for row in rows:
            if await self._close(row["order_no"], "expired", actor="system"):
                expired += 1
        return expired

    async def sweep_forever(self) -> None:
        """Expire unpaid orders as their windows close (every worker runs one; the status
        guard makes each expiry happen once)."""
        while True:
            try:
                await self.expire_due()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("order_sweep_failed", error=type(exc).__name__)
            await asyncio.sleep(self._settings.order_sweep_interval_s)

    # ------------------------------------------------------------------ refund

    async def refund(self, order_no: str, *, actor: str, reason: str) -> OrderView:
        """An operator refunds an order: every payment it holds goes back through its
        provider, delivered keys are revoked (never back in the pool), the sale reversed."""
        async with self._db.acquire() as conn:
            order = await conn.fetchrow("SELECT * FROM orders WHERE order_no = $1", order_no)
            if order is None:
                raise _not_found()
            if order["status"] not in ("delivered", "paid") and not order["refund_due"]:
                raise DomainError(
                    OrderError.INVALID_ORDER_STATE,
                    f"A {order['status']} order has nothing to refund.",
                )
            payments = await conn.fetch(
                "SELECT * FROM payments WHERE order_id = $1 AND status IN ('applied', "
                "'refund_due') ORDER BY id",
                order["id"],
            )
            # The provider first: if it refuses, nothing here changes.
            for payment in payments:
                provider = self._providers.get(payment["provider"])
                if provider is None:
                    raise DomainError(
                        OrderError.REFUND_FAILED,
                        f"Provider {payment['provider']} is not configured here.",
                    )
                refund_no = payment["refund_no"] or f"R{order_no}-{payment['id']}"
                try:
                    result = await provider.refund(
                        order_no=order_no,
                        trade_no=payment["trade_no"],
                        amount=payment["amount"],
                        total=payment["amount"],
                        refund_no=refund_no,
                        reason=reason,
                    )
                except PaymentProviderError as exc:
                    log.error("refund_failed", order_no=order_no, error=str(exc))
                    raise DomainError(
                        OrderError.REFUND_FAILED,
                        "The payment provider did not confirm the refund; nothing changed.",
                        retry_after=30,
                    ) from None
                if not result.succeeded:
                    raise DomainError(
                        OrderError.REFUND_FAILED,
                        "The payment provider refused the refund; nothing changed.",
                    )
                async with conn.transaction():
                    await self._settle_refund(conn, order, payment, refund_no)
            async with conn.transaction():
                current = await conn.fetchrow(
                    "SELECT * FROM orders WHERE id = $1 FOR UPDATE", order["id"]
                )
                assert current is not None
                if current["status"] in ("delivered", "paid"):
                    await conn.execute(
                        "UPDATE orders SET status = 'refunded', refund_due = false, "
                        "closed_at = $2 WHERE id = $1",
                        order["id"],
                        self._clock(),
                    )
                    await emit_event(
                        conn,
                        "order.refunded",
                        _event(current, "refunded"),
                        agent_id=current["store_agent_id"],
                    )
                    if current["contact_kind"] == "email":
                        await enqueue_email(
                            conn,
                            current["contact"],
                            "order_refunded",
                            current["locale"],
                            {
                                "order_no": order_no,
                                "amount": current["amount"],
                                "currency": current["currency"],
                            },
                        )
                else:
                    await conn.execute(
                        "UPDATE orders SET refund_due = false WHERE id = $1", order["id"]
                    )
                await audit.record(
                    conn, actor, "order.refunded", f"order:{order_no}", {"reason": reason}
                )
            refreshed = await conn.fetchrow("SELECT * FROM orders WHERE id = $1", order["id"])
            assert refreshed is not None
        return _view(refreshed, None)

    async def _settle_refund(
        self,
        conn: Connection,
        order: asyncpg.Record,
        payment: asyncpg.Record,
        refund_no: str,
    ) -> None:
        done = await conn.fetchval(
            "UPDATE payments SET status = 'refunded', refund_no = $2, refunded_at = $3 "
            "WHERE id = $1 AND status <> 'refunded' RETURNING status",
            payment["id"],
            refund_no,
            self._clock(),
        )
        if done is None:
            return  # refunded by a concurrent call
        if payment["status"] == "applied":
            # The keys were delivered: revoked, never back in the pool; the sale reversed.
            await conn.execute(
                "UPDATE card_keys SET state = 'revoked' WHERE id IN "
                "(SELECT card_key_id FROM order_keys WHERE order_id = $1)",
                order["id"],
            )
            await self._journal_sale(conn, order, payment["provider"], reverse=True)
        elif payment["amount"] > 0:
            acc = await self._accounts(
                conn, payment["provider"], payment["currency"], order["mode"]
            )
            await post(
                conn,
                "order.refund_unusable",
                [(acc["payable"], payment["amount"]), (acc["clearing"], -payment["amount"])],
                reference=order["order_no"],
            )


async def _store_shares(conn: Connection, order_no: str, split: Split) -> None:
    await conn.execute(
        "INSERT INTO order_shares (order_id, position, agent_id, kind, amount) "
        "SELECT o.id, s.position - 1, s.agent, s.kind, s.amount FROM orders o, "
        "unnest($2::bigint[], $3::text[], $4::bigint[]) WITH ORDINALITY "
        "AS s(agent, kind, amount, position) WHERE o.order_no = $1",
        order_no,
        [_agent_of(share.party) for share in split],
        [share.kind.value for share in split],
        [share.amount for share in split],
    )


def _pool_of(order: asyncpg.Record) -> str:
    """The pool an order's keys come from: its product's, live or test."""
    return pool_name(order["sku"], order["mode"])


def _agent_of(party: str) -> int | None:
    # A promoter's party carries its agent id (engine.distribution.promoters): its share
    # is credited to that agent's balance like the tree's.
    for prefix in ("agent:", "promoter:"):
        if party.startswith(prefix):
            return int(party.removeprefix(prefix))
    return None


def _merge(lines: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """One line per account (an agent can appear once per entry)."""
    merged: dict[int, int] = {}
    for account, value in lines:
        merged[account] = merged.get(account, 0) + value
    return [(account, value) for account, value in merged.items() if value != 0]


class _IntegrityAlarm(DomainError):
    """Keys the pool gave this order are not available in PostgreSQL: nothing delivered."""

    def __init__(self, sku: str, holder: str, unavailable: Sequence[int]) -> None:
        super().__init__(
            IssuanceError.INTEGRITY_ALARM,
            "The order's keys failed an integrity check; nothing was delivered. "
            "The payment will be retried.",
            retry_after=5,
        )
        self.sku = sku
        self.holder = holder
        self.unavailable = list(unavailable)


def _not_found() -> DomainError:
    return DomainError(OrderError.ORDER_NOT_FOUND, "No such order, or a wrong lookup token.")


def _event(order: asyncpg.Record, status: str) -> dict[str, Any]:
    return {
        "order_no": order["order_no"],
        "status": status,
        "sku": order["sku"],
        "quantity": order["quantity"],
        "amount": order["amount"],
        "currency": order["currency"],
        "store_agent_id": order["store_agent_id"],
    }


def _view(row: asyncpg.Record, keys: list[str] | None) -> OrderView:
    return OrderView(
        order_no=row["order_no"],
        status=row["status"],
        sku=row["sku"],
        quantity=row["quantity"],
        amount=row["amount"],
        currency=row["currency"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        paid_at=row["paid_at"],
        delivered_at=row["delivered_at"],
        keys=keys,
    )


__all__ = [
    "CreatedOrder",
    "NewOrder",
    "OrderService",
    "OrderView",
    "PaymentOutcome",
]
