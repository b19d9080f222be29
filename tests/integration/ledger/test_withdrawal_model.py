"""A Hypothesis state machine over deposits, withdrawals (request, approve, reject) and
purchases through the real issuance path, against a model of every account.

After every step: the trial balance is zero, each account's balance is the sum of its
lines, balance + withdrawing never goes below the credit limit (the balance alone never
does either), and the parent's commissions are exactly its differentials.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine._core import Pool
from engine.catalog.service import ProductType, create_product
from engine.crypto.keyring import Keyring, load_keyring
from engine.distribution.service import create_agent, create_api_key, create_level
from engine.errors import DomainError
from engine.inventory.files import screen_codes
from engine.inventory.pools import rebuild
from engine.inventory.service import add_codes
from engine.issuance.service import IssuanceService
from engine.ledger import withdrawals
from engine.ledger.service import deposit, trial_balance
from engine.ledger.withdrawals import WithdrawalStatus
from engine.principals import AgentKey
from engine.settings import Settings, decode_master_key

pytestmark = pytest.mark.slow

KEYS = 40
PARENT_PRICE = 500
CHILD_PRICE = 700
CREDIT = 1_000


class WithdrawalMachine(RuleBasedStateMachine):
    database_url: str
    redis_url: str
    namespace: str
    master_key: bytes

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.balance = 0  # the child's, in its own view
        self.withdrawals: list[tuple[int, int, str]] = []  # (id, amount, status)
        self.commissions = 0  # the parent's
        self.issued = 0
        self.requests = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @property
    def withdrawing(self) -> int:
        return sum(amount for _, amount, status in self.withdrawals if status == "requested")

    @initialize()
    def setup(self) -> None:
        self.run(self._setup())

    async def _setup(self) -> None:
        self.db = await asyncpg.create_pool(self.database_url, min_size=1, max_size=4)
        self.pool = Pool(self.redis_url, namespace=self.namespace)
        async with self.db.acquire() as conn:
            self.keyring: Keyring = await load_keyring(conn, self.master_key)
            async with conn.transaction():
                self.sku = f"WM-{secrets.token_hex(4).upper()}"
                product = await create_product(
                    conn, sku=self.sku, name="m", type=ProductType.CARD, price=999
                )
                codes, _ = screen_codes([f"{self.sku}-{i}" for i in range(KEYS)])
                await add_codes(conn, self.keyring, product, codes)
                top = await create_level(
                    conn, name="top", rank=2, prices={self.sku: PARENT_PRICE}, visible_skus=None
                )
                low = await create_level(
                    conn, name="low", rank=1, prices={self.sku: CHILD_PRICE}, visible_skus=None
                )
                self.parent = await create_agent(conn, name="p", level_id=top.id)
                child = await create_agent(
                    conn, name="c", level_id=low.id, parent_id=self.parent.id, credit_limit=CREDIT
                )
                key_id, _, _ = await create_api_key(conn, child.id)
                self.child = AgentKey(key_id, child.id, low.id, "live")
        await rebuild(self.db, self.pool, self.sku)
        self.service = IssuanceService(self.db, self.pool, self.keyring)

    @rule(amount=st.integers(1, 4_000))
    def deposit(self, amount: int) -> None:
        async def go() -> None:
            async with self.db.acquire() as conn, conn.transaction():
                await deposit(conn, self.child.agent_id, amount)

        self.run(go())
        self.balance += amount
        self.service.balances.forget(self.child.agent_id)

    @rule(amount=st.integers(1, 3_000), concurrent=st.integers(1, 3))
    def request(self, amount: int, concurrent: int) -> None:
        async def one() -> Any:
            try:
                async with self.db.acquire() as conn, conn.transaction():
                    return await withdrawals.request(
                        conn, self.child.agent_id, amount, actor="test"
                    )
            except DomainError as exc:
                return str(exc.code)

        async def burst() -> list[Any]:
            return await asyncio.gather(*(one() for _ in range(concurrent)))

        outcomes = self.run(burst())
        # Concurrent requests are serialised by the row lock: as many succeed as the
        # balance covers, whatever order they ran in.
        expected = min(concurrent, max(0, self.balance) // amount)
        granted = [o for o in outcomes if not isinstance(o, str)]
        assert len(granted) == expected, (outcomes, self.balance)
        assert all(o == "insufficient_balance" for o in outcomes if isinstance(o, str))
        for withdrawal in granted:
            self.withdrawals.append((withdrawal.id, amount, "requested"))
            self.balance -= amount
        self.service.balances.forget(self.child.agent_id)

    @rule(data=st.data(), decision=st.sampled_from(list(WithdrawalStatus)[1:]))
    def decide(self, data: st.DataObject, decision: WithdrawalStatus) -> None:
        if not self.withdrawals:
            return
        index = data.draw(st.integers(0, len(self.withdrawals) - 1))
        withdrawal_id, amount, status = self.withdrawals[index]

        async def go() -> Any:
            try:
                async with self.db.acquire() as conn, conn.transaction():
                    return await withdrawals.decide(
                        conn, withdrawal_id, decision, actor="op", now=datetime.now(UTC)
                    )
            except DomainError as exc:
                return str(exc.code)

        outcome = self.run(go())
        if status == "requested":
            assert outcome.status == decision.value
            self.withdrawals[index] = (withdrawal_id, amount, decision.value)
            if decision is WithdrawalStatus.REJECTED:
                self.balance += amount
        elif status == decision.value:
            assert outcome.status == status  # idempotent: nothing moved
        else:
            assert outcome == "invalid_withdrawal_state"
        self.service.balances.forget(self.child.agent_id)

    @rule(quantity=st.integers(1, 4))
    def spend(self, quantity: int) -> None:
        self.requests += 1

        async def go() -> Any:
            try:
                return await self.service.issue(
                    self.child,
                    sku=self.sku,
                    quantity=quantity,
                    reference=None,
                    idempotency_key=f"s{self.requests}",
                    request_hash=b"h" * 32,
                )
            except DomainError as exc:
                return str(exc.code)

        outcome = self.run(go())
        affordable = self.balance + CREDIT >= quantity * CHILD_PRICE
        in_stock = KEYS - self.issued >= quantity
        if isinstance(outcome, str):
            assert outcome == ("insufficient_balance" if not affordable else "out_of_stock")
            assert not (affordable and in_stock)
            return
        assert affordable and in_stock
        self.balance -= outcome.amount
        self.issued += quantity
        self.commissions += (CHILD_PRICE - PARENT_PRICE) * quantity

    @invariant()
    def books_agree(self) -> None:
        if not hasattr(self, "service"):
            return
        self.run(self._check())

    async def _check(self) -> None:
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT a.code, -a.balance AS balance, "
                "(SELECT -coalesce(sum(l.amount), 0) FROM journal_lines l "
                " WHERE l.account_id = a.id) AS lines "
                "FROM accounts a WHERE a.agent_id = ANY($1::bigint[])",
                [self.child.agent_id, self.parent.id],
            )
            totals = await trial_balance(conn)
            commission_total = await conn.fetchval(
                "SELECT coalesce(sum(amount), 0) FROM commissions WHERE agent_id = $1 "
                "AND reversed_at IS NULL",
                self.parent.id,
            )
        books = {r["code"]: r["balance"] for r in rows}
        assert all(r["balance"] == r["lines"] for r in rows)
        assert totals.balanced
        child = self.child.agent_id
        balance = books.get(f"agent:{child}:balance", 0)
        withdrawing = books.get(f"agent:{child}:withdrawing", 0)
        assert (balance, withdrawing) == (self.balance, self.withdrawing)
        assert balance >= -CREDIT
        assert balance + withdrawing >= -CREDIT
        assert books.get(f"agent:{self.parent.id}:balance", 0) == self.commissions
        assert commission_total == self.commissions

    def teardown(self) -> None:
        if hasattr(self, "service"):
            self.run(self.service.close())
            self.run(self.db.close())
        self.loop.close()


def test_withdrawals_and_spending_follow_the_model(
    database_url: str, redis_url: str, settings: Settings
) -> None:
    assert settings.master_key is not None
    WithdrawalMachine.database_url = database_url
    WithdrawalMachine.redis_url = redis_url
    WithdrawalMachine.namespace = settings.redis_namespace
    WithdrawalMachine.master_key = decode_master_key(settings.master_key.get_secret_value())
    run = WithdrawalMachine.TestCase()
    run.settings = hypothesis_settings(
        max_examples=15,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    run.runTest()
