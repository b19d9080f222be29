"""A Hypothesis state machine over storefront orders — create, pay (with concurrent
replays and second payments), expire, cancel, refund — checked after every step against a
model: each order's status follows the allowed transitions, the pool's held and issued
counts match the orders, a key is delivered at most once, money balances."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine._core import Pool
from engine.catalog.service import ProductType, create_product
from engine.crypto.keyring import load_keyring
from engine.errors import DomainError
from engine.inventory.files import screen_codes
from engine.inventory.pools import rebuild
from engine.inventory.service import add_codes
from engine.ledger.service import trial_balance
from engine.orders.service import NewOrder, OrderService, utcnow
from engine.payments.registry import build_providers
from engine.payments.sandbox import SandboxProvider
from engine.settings import Settings

pytestmark = pytest.mark.slow

KEYS = 12
PRICE = 990
ALLOWED = {
    "pending_payment": {"pending_payment", "delivered", "paid", "expired", "cancelled"},
    "expired": {"expired", "delivered", "paid"},
    "cancelled": {"cancelled", "delivered", "paid"},
    "paid": {"paid", "refunded"},
    "delivered": {"delivered", "refunded"},
    "refunded": {"refunded"},
}


class OrderMachine(RuleBasedStateMachine):
    settings: Settings

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = utcnow()
        self.orders: list[dict[str, Any]] = []
        self.status: dict[str, str] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize()
    def setup(self) -> None:
        self.run(self._setup())

    async def _setup(self) -> None:
        s = self.settings
        assert s.database_url is not None and s.redis_url is not None
        assert s.master_key is not None
        from engine.settings import decode_master_key

        self.db = await asyncpg.create_pool(
            s.database_url.get_secret_value(), min_size=1, max_size=6
        )
        self.pool = Pool(s.redis_url.get_secret_value(), namespace=s.redis_namespace)
        async with self.db.acquire() as conn:
            keyring = await load_keyring(conn, decode_master_key(s.master_key.get_secret_value()))
            self.sku = f"OM-{secrets.token_hex(4).upper()}"
            async with conn.transaction():
                product = await create_product(
                    conn, sku=self.sku, name="m", type=ProductType.CARD, price=PRICE
                )
                codes, _ = screen_codes([f"{self.sku}-{i}" for i in range(KEYS)])
                await add_codes(conn, keyring, product, codes)
        await rebuild(self.db, self.pool, self.sku)
        self.service = OrderService(
            self.db, self.pool, keyring, build_providers(s), s, clock=lambda: self.now
        )
        sandbox = self.service.providers["sandbox"]
        assert isinstance(sandbox, SandboxProvider)
        self.sandbox = sandbox

    @rule(quantity=st.integers(1, 3), contact=st.integers(0, 5))
    def create(self, quantity: int, contact: int) -> None:
        new = NewOrder(
            sku=self.sku,
            quantity=quantity,
            contact_kind="email",
            contact=f"m{contact}-{self.sku}@example.com",
            payment_method="sandbox",
        )
        refused: str | None = None
        try:
            created = self.run(self.service.create(new))
        except DomainError as exc:
            refused = str(exc.code)
        if refused is not None:
            assert refused in {"out_of_stock", "reservation_limit"}, refused
            return
        order = {"no": created.order_no, "token": created.lookup_token, "qty": quantity}
        self.orders.append(order)
        self.status[created.order_no] = "pending_payment"

    def _pick(self, index: int) -> dict[str, Any]:
        return self.orders[index % len(self.orders)]

    @precondition(lambda self: bool(self.orders))
    @rule(index=st.integers(0, 50), replays=st.integers(1, 3), fresh_trade=st.booleans())
    def pay(self, index: int, replays: int, fresh_trade: bool) -> None:
        order = self._pick(index)
        trade = f"T-{order['no']}-{secrets.token_hex(3) if fresh_trade else 'first'}"
        signed = self.sandbox.sign_payment(order["no"], order["qty"] * PRICE, "CNY", trade)

        async def once() -> str:
            notice = self.sandbox.verify_notify(
                method=signed.method, headers=signed.headers, query=signed.query, body=signed.body
            )
            return (await self.service.apply_payment(notice)).result

        async def burst() -> list[str]:
            return await asyncio.gather(*(once() for _ in range(replays)))

        results = self.run(burst())
        assert sum(r in ("delivered", "refund_due") for r in results) <= 1
        self._refresh(order)

    @precondition(lambda self: bool(self.orders))
    @rule()
    def expire(self) -> None:
        self.now += timedelta(seconds=self.settings.order_payment_window_s + 1)
        self.run(self.service.expire_due())
        for order in self.orders:
            self._refresh(order)

    @precondition(lambda self: bool(self.orders))
    @rule(index=st.integers(0, 50))
    def cancel(self, index: int) -> None:
        order = self._pick(index)
        refused: str | None = None
        try:
            self.run(self.service.cancel(order["no"], order["token"]))
        except DomainError as exc:
            refused = str(exc.code)
        if refused is not None:
            assert refused == "invalid_order_state"
            assert self.status[order["no"]] != "pending_payment"
        self._refresh(order)

    @precondition(lambda self: bool(self.orders))
    @rule(index=st.integers(0, 50))
    def refund(self, index: int) -> None:
        order = self._pick(index)
        refused: str | None = None
        try:
            self.run(self.service.refund(order["no"], actor="model", reason="model"))
        except DomainError as exc:
            refused = str(exc.code)
        assert refused in (None, "invalid_order_state")
        self._refresh(order)

    def _refresh(self, order: dict[str, Any]) -> None:
        status = self.run(
            self.db.fetchval("SELECT status FROM orders WHERE order_no = $1", order["no"])
        )
        before = self.status[order["no"]]
        assert status in ALLOWED[before], (before, status)
        self.status[order["no"]] = status

    @invariant()
    def books_and_stock_agree(self) -> None:
        if not hasattr(self, "service"):
            return

        async def check() -> None:
            async with self.db.acquire() as conn:
                delivered = await conn.fetch(
                    "SELECT o.order_no, o.quantity, count(k.card_key_id) AS keys, "
                    "count(DISTINCT k.card_key_id) AS distinct_keys FROM orders o "
                    "LEFT JOIN order_keys k ON k.order_id = o.id WHERE o.sku = $1 "
                    "GROUP BY o.id",
                    self.sku,
                )
                states = {
                    r["state"]: r["n"]
                    for r in await conn.fetch(
                        "SELECT state, count(*) AS n FROM card_keys k JOIN products p "
                        "ON p.id = k.product_id WHERE p.sku = $1 GROUP BY state",
                        self.sku,
                    )
                }
                totals = await trial_balance(conn)
            keys_out = 0
            for row in delivered:
                status = self.status[row["order_no"]]
                if status in ("delivered", "refunded") and row["keys"]:
                    assert row["keys"] == row["distinct_keys"] == row["quantity"]
                else:
                    assert row["keys"] == 0
                keys_out += row["keys"]
            # Every key is available, delivered once, or (refunded) revoked.
            assert states.get("issued", 0) + states.get("revoked", 0) == keys_out
            assert sum(states.values()) == KEYS
            held = sum(o["qty"] for o in self.orders if self.status[o["no"]] == "pending_payment")
            assert await self.pool.stock(self.sku) == (KEYS - keys_out - held, held, keys_out)
            assert totals.balanced

        self.run(check())

    def teardown(self) -> None:
        if hasattr(self, "service"):
            self.run(self.db.close())
        self.loop.close()


def test_orders_follow_the_model(settings: Settings) -> None:
    OrderMachine.settings = settings.model_copy(update={"sandbox": True})
    run = OrderMachine.TestCase()
    run.settings = machine_settings
    run.runTest()


machine_settings = settings(
    max_examples=10,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
