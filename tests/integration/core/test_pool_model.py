"""A Hypothesis state machine drives one pool with load / reserve / confirm / release /
take / expire and a moving clock, and checks it against a plain Python model after every
step: counts, holders, which entries each call returns, and lowest-priority-first."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from engine import HoldNotFound, OutOfStock, Pool

T = TypeVar("T")
T0 = 1_800_000_000_000
HOLDERS = st.sampled_from(["h1", "h2", "h3", "h4", "h5"])


def ct(entry_id: int) -> bytes:
    return entry_id.to_bytes(8, "big") + b"\x5a" * 40


class PoolMachine(RuleBasedStateMachine):
    url = ""  # set by the test from the `redis_url` fixture

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.pool = Pool(self.url, namespace=f"km{uuid.uuid4().hex[:10]}")
        self.sku = "SKU"
        self.now = T0
        self.pool.clock_ms = self.now
        self.next_id = 1
        self.priority: dict[int, int] = {}
        self.avail: set[int] = set()
        self.holds: dict[str, tuple[list[int], int]] = {}
        self.issued: dict[str, list[int]] = {}
        self.issued_total = 0

    def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Pool methods need a running loop when called, not only when awaited."""

        async def main() -> T:
            return await call()

        return self.loop.run_until_complete(main())

    def settle(self) -> int:
        """Every script call first returns the holds whose TTL passed."""
        expired = [h for h, (_, exp) in self.holds.items() if exp <= self.now]
        for h in expired:
            self.avail.update(self.holds.pop(h)[0])
        return len(expired)

    def check_new(self, got: list[tuple[int, bytes]], quantity: int) -> list[int]:
        ids = [i for i, _ in got]
        assert len(ids) == len(set(ids)) == quantity
        assert all(c == ct(i) for i, c in got)
        assert set(ids) <= self.avail
        self.avail -= set(ids)
        if self.avail:
            assert max(self.priority[i] for i in ids) <= min(self.priority[i] for i in self.avail)
        return ids

    def teardown(self) -> None:
        try:
            self.run(lambda: self.pool.drain(self.sku))
        finally:
            self.loop.close()

    @rule(n=st.integers(1, 8), priority=st.integers(1, 3))
    def load(self, n: int, priority: int) -> None:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        added = self.run(lambda: self.pool.load(self.sku, [(i, ct(i), priority) for i in ids]))
        assert added == n
        self.settle()
        for i in ids:
            self.priority[i] = priority
        self.avail.update(ids)

    @rule(data=st.data())
    def reload_known(self, data: st.DataObject) -> None:
        if not self.priority:
            return
        ids = data.draw(st.lists(st.sampled_from(sorted(self.priority)), max_size=5))
        entries = [(i, ct(i), self.priority[i]) for i in ids]
        assert self.run(lambda: self.pool.load(self.sku, entries)) == 0
        self.settle()

    @rule(holder=HOLDERS, quantity=st.integers(1, 4), ttl=st.sampled_from([100, 1_000, 10_000]))
    def reserve(self, holder: str, quantity: int, ttl: int) -> None:
        self.settle()
        try:
            got = self.run(lambda: self.pool.reserve(self.sku, holder, quantity, ttl))
        except OutOfStock:
            assert holder not in self.holds
            assert holder not in self.issued
            assert len(self.avail) < quantity
            return
        if holder in self.holds:
            assert [i for i, _ in got] == self.holds[holder][0]
        elif holder in self.issued:
            assert [i for i, _ in got] == self.issued[holder]
        else:
            self.holds[holder] = (self.check_new(got, quantity), self.now + ttl)

    @rule(holder=HOLDERS)
    def confirm(self, holder: str) -> None:
        self.settle()
        try:
            ids = self.run(lambda: self.pool.confirm(self.sku, holder))
        except HoldNotFound:
            assert holder not in self.holds
            assert holder not in self.issued
            return
        if holder in self.holds:
            expected = self.holds.pop(holder)[0]
            self.issued[holder] = expected
            self.issued_total += len(expected)
        assert ids == self.issued[holder]

    @rule(holder=HOLDERS)
    def release(self, holder: str) -> None:
        self.settle()
        try:
            n = self.run(lambda: self.pool.release(self.sku, holder))
        except HoldNotFound:
            assert holder not in self.holds
            return
        ids = self.holds.pop(holder)[0]
        assert n == len(ids)
        self.avail.update(ids)

    @rule(holder=HOLDERS, quantity=st.integers(1, 4))
    def take(self, holder: str, quantity: int) -> None:
        self.settle()
        try:
            got = self.run(lambda: self.pool.take(self.sku, holder, quantity))
        except OutOfStock:
            assert holder not in self.holds
            assert holder not in self.issued
            assert len(self.avail) < quantity
            return
        ids = [i for i, _ in got]
        if holder in self.issued:
            assert ids == self.issued[holder]
        elif holder in self.holds:
            assert ids == self.holds.pop(holder)[0]
            self.issued[holder] = ids
            self.issued_total += len(ids)
        else:
            self.issued[holder] = self.check_new(got, quantity)
            self.issued_total += quantity

    @rule(dt=st.sampled_from([1, 99, 500, 5_000]), explicit=st.booleans())
    def advance_and_expire(self, dt: int, explicit: bool) -> None:
        self.now += dt
        if explicit:  # the sweeper's own clock argument
            n = self.run(lambda: self.pool.expire(self.sku, now_ms=self.now))
        else:
            self.pool.clock_ms = self.now
            n = self.run(lambda: self.pool.expire(self.sku))
        self.pool.clock_ms = self.now
        assert n == self.settle()

    @invariant()
    def counts_and_holders_match(self) -> None:
        stock = self.run(lambda: self.pool.stock(self.sku))
        self.settle()
        held = sum(len(ids) for ids, _ in self.holds.values())
        assert stock == (len(self.avail), held, self.issued_total)
        if self.priority:
            holders = set(self.run(lambda: self.pool.holders(self.sku)))
            assert holders == set(self.holds) | set(self.issued)


def test_pool_matches_the_model(redis_url: str) -> None:
    # A sync test: each machine runs its own event loop.
    machine = type("Machine", (PoolMachine,), {"url": redis_url})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
