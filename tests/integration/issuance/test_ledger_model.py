"""A Hypothesis state machine over deposits and issuances, checked against a model after
every step: balances, credit limits, the trial balance, stock and key uniqueness."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
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
from engine.ledger.service import deposit, trial_balance
from engine.principals import AgentKey
from engine.settings import Settings

pytestmark = pytest.mark.slow

KEYS = 30
PRICE = 700


class LedgerMachine(RuleBasedStateMachine):
    database_url: str
    redis_url: str
    namespace: str
    master_key: bytes

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.model_balance: dict[int, int] = {}
        self.credit: dict[int, int] = {}
        self.issued_codes: list[str] = []
        self.requests = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize()
    def setup(self) -> None:
        self.run(self._setup())

    async def _setup(self) -> None:
        self.db = await asyncpg.create_pool(self.database_url, min_size=1, max_size=4)
        self.pool = Pool(self.redis_url, namespace=self.namespace)
        async with self.db.acquire() as conn:
            self.keyring: Keyring = await load_keyring(conn, self.master_key)
            async with conn.transaction():
                self.sku = f"LM-{secrets.token_hex(4).upper()}"
                product = await create_product(
                    conn, sku=self.sku, name="m", type=ProductType.CARD, price=999
                )
                codes, _ = screen_codes([f"{self.sku}-{i}" for i in range(KEYS)])
                await add_codes(conn, self.keyring, product, codes)
                level = await create_level(
                    conn, name="m", rank=1, prices={self.sku: PRICE}, visible_skus=None
                )
                self.agents: list[AgentKey] = []
                for credit in (0, 1000):
                    agent = await create_agent(
                        conn, name="m", level_id=level.id, credit_limit=credit
                    )
                    key_id, _, _ = await create_api_key(conn, agent.id)
                    self.agents.append(AgentKey(key_id, agent.id, level.id, "live"))
                    self.model_balance[agent.id] = 0
                    self.credit[agent.id] = credit
        await rebuild(self.db, self.pool, self.sku)
        self.service = IssuanceService(self.db, self.pool, self.keyring)

    @rule(which=st.integers(0, 1), amount=st.integers(1, 3000))
    def deposit(self, which: int, amount: int) -> None:
        agent = self.agents[which]

        async def go() -> None:
            async with self.db.acquire() as conn, conn.transaction():
                await deposit(conn, agent.agent_id, amount)

        self.run(go())
        self.model_balance[agent.agent_id] += amount
        self.service.balances.forget(agent.agent_id)

    @rule(which=st.integers(0, 1), quantity=st.integers(1, 4), concurrent=st.integers(1, 3))
    def issue(self, which: int, quantity: int, concurrent: int) -> None:
        agent = self.agents[which]

        async def one() -> Any:
            self.requests += 1
            try:
                return await self.service.issue(
                    agent,
                    sku=self.sku,
                    quantity=quantity,
                    reference=None,
                    idempotency_key=f"k{self.requests}",
                    request_hash=b"h" * 32,
                )
            except DomainError as exc:
                return str(exc.code)

        async def burst() -> list[Any]:
            return await asyncio.gather(*(one() for _ in range(concurrent)))

        available_before = KEYS - len(self.issued_codes)
        funds = self.model_balance[agent.agent_id] + self.credit[agent.agent_id]
        outcomes = self.run(burst())
        for outcome in outcomes:
            if isinstance(outcome, str):
                assert outcome in {"out_of_stock", "insufficient_balance"}, outcome
                continue
            assert outcome.quantity == quantity
            self.issued_codes += [k.code for k in outcome.keys]
            self.model_balance[agent.agent_id] -= outcome.amount
        successes = [o for o in outcomes if not isinstance(o, str)]
        # Whatever was refused was refused for a reason the model agrees with.
        if len(successes) < len(outcomes):
            spent = len(successes) * quantity * PRICE
            left_funds = funds - spent
            left_stock = available_before - len(successes) * quantity
            assert left_funds < quantity * PRICE or left_stock < quantity

    @invariant()
    def books_agree(self) -> None:
        if not hasattr(self, "service"):
            return

        async def check() -> None:
            async with self.db.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT agent_id, -balance AS balance, "
                    "(SELECT -coalesce(sum(amount), 0) FROM journal_lines l "
                    " WHERE l.account_id = a.id) AS lines FROM accounts a "
                    "WHERE agent_id = ANY($1::bigint[])",
                    list(self.model_balance),
                )
                totals = await trial_balance(conn)
                issued = await conn.fetchval(
                    "SELECT count(*) FROM card_keys k JOIN products p ON p.id = k.product_id "
                    "WHERE p.sku = $1 AND k.state = 'issued'",
                    self.sku,
                )
            for row in rows:
                assert row["balance"] == row["lines"] == self.model_balance[row["agent_id"]]
                assert row["balance"] >= -self.credit[row["agent_id"]]
            assert totals.balanced
            assert issued == len(self.issued_codes) == len(set(self.issued_codes))
            available, held, pool_issued = await self.pool.stock(self.sku)
            assert (available, held) == (KEYS - issued, 0)
            assert pool_issued == issued

        self.run(check())

    def teardown(self) -> None:
        if hasattr(self, "service"):
            self.run(self.service.close())
            self.run(self.db.close())
        self.loop.close()


def test_ledger_and_stock_follow_the_model(
    database_url: str, redis_url: str, settings: Settings
) -> None:
    assert settings.master_key is not None
    from engine.settings import decode_master_key

    LedgerMachine.database_url = database_url
    LedgerMachine.redis_url = redis_url
    LedgerMachine.namespace = settings.redis_namespace
    LedgerMachine.master_key = decode_master_key(settings.master_key.get_secret_value())
    run = LedgerMachine.TestCase()
    run.settings = settings_for_machine
    run.runTest()


settings_for_machine = settings(
    max_examples=12,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
