from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import httpx
import orjson
import pytest

from engine.distribution.service import create_agent, create_level
from engine.notify import OutboxWorker, emit_event
from engine.settings import Settings
from tests.integration.notify.conftest import add_endpoint, status_of, work_until
from tests.support.receivers import WebhookReceiver

ORDER = {"order_no": "K20261122000001", "sku": "VIP-MONTH", "quantity": 1, "amount": 1990}


async def emit(db: asyncpg.Connection, event_type: str = "order.paid", **kw: object) -> list[int]:
    async with db.transaction():
        return await emit_event(db, event_type, dict(ORDER), **kw)  # type: ignore[arg-type]


async def test_a_flaky_receiver_gets_the_event_on_the_fourth_attempt_with_one_id(
    db: asyncpg.Connection, pool: asyncpg.Pool, fast: Settings
) -> None:
    with WebhookReceiver(fail_first=3) as receiver:
        _, receiver.secret = await add_endpoint(db, receiver.url)
        [outbox_id] = await emit(db, "order.paid")
        worker = OutboxWorker(pool, fast)
        try:
            await work_until(worker, lambda: _is(db, outbox_id, "sent"))
        finally:
            await worker.close()

    row = await status_of(db, outbox_id)
    assert row["attempts"] == 4
    assert row["last_error"] is None
    attempts = receiver.all_attempts()
    assert [a.status for a in attempts] == [500, 500, 500, 204]
    # Every attempt is the same message to the receiver: one webhook-id, each signed.
    assert {a.headers["webhook-id"] for a in attempts} == {row["message_id"]}
    assert all(a.verified for a in attempts)
    body = orjson.loads(attempts[-1].body)
    assert body["type"] == "order.paid"
    assert body["data"] == ORDER
    assert body["timestamp"].endswith("Z")


async def test_a_receiver_down_throughout_ends_dead_and_an_operator_retry_delivers(
    db: asyncpg.Connection, pool: asyncpg.Pool, fast: Settings, fast_operator: httpx.AsyncClient
) -> None:
    operator = fast_operator
    receiver = WebhookReceiver()  # not started: its port refuses connections
    _, receiver.secret = await add_endpoint(db, receiver.url)
    [outbox_id] = await emit(db, "order.delivered")
    worker = OutboxWorker(pool, fast)
    try:
        await work_until(worker, lambda: _is(db, outbox_id, "dead"))
        dead = await status_of(db, outbox_id)
        assert dead["attempts"] == fast.outbox_max_attempts
        assert dead["last_error"] == "ConnectError"
        listed = (await operator.get("/v1/outbox", params={"status": "dead"})).json()
        assert [m["id"] for m in listed["data"]] == [outbox_id]

        with receiver:
            response = await operator.post(
                f"/v1/outbox/{outbox_id}/retry", headers={"Idempotency-Key": f"r-{outbox_id}"}
            )
            assert response.status_code == 200, response.text
            assert response.json()["status"] in {"pending", "sending", "sent"}
            # The app's own worker may win the race for it; either way it goes out once.
            await work_until(worker, lambda: _is(db, outbox_id, "sent"))
            await asyncio.sleep(0.1)
            delivered = receiver.delivered()
    finally:
        await worker.close()

    assert len(delivered) == 1
    assert delivered[0].verified
    assert delivered[0].headers["webhook-id"] == dead["message_id"]
    audit = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'outbox.retried' AND subject = $1",
        f"outbox:{outbox_id}",
    )
    assert audit == 1


async def test_an_event_in_a_rolled_back_transaction_sends_nothing(
    db: asyncpg.Connection, pool: asyncpg.Pool, fast: Settings
) -> None:
    with WebhookReceiver() as receiver:
        await add_endpoint(db, receiver.url)
        with pytest.raises(RuntimeError, match="payment failed"):
            async with db.transaction():
                assert len(await emit_event(db, "order.paid", dict(ORDER))) == 1
                raise RuntimeError("payment failed")
        worker = OutboxWorker(pool, fast)
        try:
            assert await worker.run_once() == 0
        finally:
            await worker.close()
        assert await db.fetchval("SELECT count(*) FROM outbox") == 0
        assert receiver.all_attempts() == []


async def test_two_workers_deliver_each_message_exactly_once(
    db: asyncpg.Connection, database_url: str, fast: Settings
) -> None:
    messages = 80
    with WebhookReceiver() as receiver:
        _, receiver.secret = await add_endpoint(db, receiver.url)
        async with db.transaction():
            for n in range(messages):
                await emit_event(db, "order.paid", {**ORDER, "n": n})
        # Separate pools, as two processes would have.
        pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=4) for _ in range(2)]
        workers = [OutboxWorker(p, fast, batch_size=7) for p in pools]

        async def drain(worker: OutboxWorker) -> int:
            handled = 0
            while (n := await worker.run_once()) > 0:
                handled += n
            return handled

        try:
            handled = await asyncio.gather(*(drain(w) for w in workers))
        finally:
            for worker in workers:
                await worker.close()
            for p in pools:
                await p.close()
        attempts = receiver.all_attempts()

    assert sum(handled) == messages
    assert all(n > 0 for n in handled), "both workers should have taken a share"
    ids = Counter(a.headers["webhook-id"] for a in attempts)
    assert len(ids) == messages
    assert set(ids.values()) == {1}
    assert all(a.verified for a in attempts)
    assert sorted(orjson.loads(a.body)["data"]["n"] for a in attempts) == list(range(messages))
    rows = await db.fetch("SELECT status, attempts FROM outbox")
    assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 1)}


async def test_a_claim_whose_worker_died_is_sent_when_its_lease_expires(
    db: asyncpg.Connection, pool: asyncpg.Pool, fast: Settings
) -> None:
    with WebhookReceiver() as receiver:
        _, receiver.secret = await add_endpoint(db, receiver.url)
        [outbox_id] = await emit(db)
        # What a worker killed mid-send leaves behind: claimed, lease running.
        await db.execute(
            "UPDATE outbox SET status = 'sending', attempts = 1, "
            "next_attempt_at = now() + interval '1 hour' WHERE id = $1",
            outbox_id,
        )
        worker = OutboxWorker(pool, fast)
        try:
            assert await worker.run_once() == 0  # still leased: not due
            await db.execute(
                "UPDATE outbox SET next_attempt_at = now() - interval '1 second' WHERE id = $1",
                outbox_id,
            )
            assert await worker.run_once() == 1
        finally:
            await worker.close()
        assert len(receiver.delivered()) == 1
    row = await status_of(db, outbox_id)
    assert (row["status"], row["attempts"]) == ("sent", 2)


async def test_events_go_to_subscribed_enabled_endpoints_of_the_merchant_and_the_agent(
    db: asyncpg.Connection,
) -> None:
    level = await create_level(db, name="notify-test", rank=1, prices={}, visible_skus=None)
    agent = await create_agent(db, name="agent-a", level_id=level.id)
    other = await create_agent(db, name="agent-b", level_id=level.id)
    everything, _ = await add_endpoint(db, "https://merchant.example/all")
    await add_endpoint(db, "https://merchant.example/refunds", event_types=["order.refunded"])
    own, _ = await add_endpoint(db, "https://agent-a.example/", agent_id=agent.id)
    await add_endpoint(db, "https://agent-b.example/", agent_id=other.id)
    disabled, _ = await add_endpoint(db, "https://merchant.example/old")
    await db.execute("UPDATE webhook_endpoints SET enabled = false WHERE id = $1", disabled)

    async with db.transaction():
        ids = await emit_event(db, "order.paid", dict(ORDER), agent_id=agent.id)
        merchant_only = await emit_event(db, "order.paid", dict(ORDER))
    targets = await db.fetch(
        "SELECT id, endpoint_id, message_id FROM outbox WHERE id = ANY($1) ORDER BY id", ids
    )
    assert [r["endpoint_id"] for r in targets] == [everything, own]
    assert len({r["message_id"] for r in targets}) == 2  # one webhook-id per delivery
    assert len(merchant_only) == 1

    with pytest.raises(ValueError, match="unknown event type"):
        await emit_event(db, "order.payed", {})


async def test_messages_for_a_disabled_endpoint_go_dead_without_a_request(
    db: asyncpg.Connection, pool: asyncpg.Pool, fast: Settings
) -> None:
    with WebhookReceiver() as receiver:
        endpoint_id, _ = await add_endpoint(db, receiver.url)
        [outbox_id] = await emit(db)
        await db.execute("UPDATE webhook_endpoints SET enabled = false WHERE id = $1", endpoint_id)
        worker = OutboxWorker(pool, fast)
        try:
            assert await worker.run_once() == 1
        finally:
            await worker.close()
        assert receiver.all_attempts() == []
    row = await status_of(db, outbox_id)
    assert (row["status"], row["last_error"]) == ("dead", "webhook endpoint disabled")


async def test_a_non_2xx_answer_is_retried_with_a_short_reason(
    db: asyncpg.Connection, pool: asyncpg.Pool, fast: Settings
) -> None:
    with WebhookReceiver(fail_first=1, fail_status=302) as receiver:
        await add_endpoint(db, receiver.url)
        [outbox_id] = await emit(db)
        worker = OutboxWorker(pool, fast)
        try:
            assert await worker.run_once() == 1
        finally:
            await worker.close()
    row = await status_of(db, outbox_id)
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, "HTTP 302")


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(settings: Settings) -> None:
    worker = OutboxWorker(None, settings)  # type: ignore[arg-type]
    base, cap = settings.outbox_backoff_base_s, settings.outbox_backoff_cap_s
    for attempts in (1, 2, 5, 10, 40):
        step = min(cap, base * 2 ** (attempts - 1))
        delays = [worker.backoff_s(attempts) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1
    assert worker.backoff_s(10_000) <= cap


async def _is(db: asyncpg.Connection, outbox_id: int, status: str) -> bool:
    current: str = await db.fetchval("SELECT status FROM outbox WHERE id = $1", outbox_id)
    return current == status


async def test_a_message_that_crashes_its_attempt_is_retried_and_spares_the_others(
    db: asyncpg.Connection, pool: asyncpg.Pool, fast: Settings
) -> None:
    with WebhookReceiver() as good, WebhookReceiver() as bad:
        await add_endpoint(db, good.url)
        broken, _ = await add_endpoint(db, bad.url)
        # A secret damaged in the database: signing raises something no one expected.
        await db.execute("UPDATE webhook_endpoints SET secret = 'whsec_!!!' WHERE id = $1", broken)
        ids = await emit(db)
        worker = OutboxWorker(pool, fast)
        try:
            assert await worker.run_once() == 2
        finally:
            await worker.close()
        assert len(good.delivered()) == 1
        assert bad.all_attempts() == []
    rows = {
        r["endpoint_id"]: r for r in await db.fetch("SELECT * FROM outbox WHERE id = ANY($1)", ids)
    }
    assert rows[broken]["status"] == "pending"
    assert rows[broken]["last_error"] == "EmptyWebhookSecretError"
    assert "!!!" not in rows[broken]["last_error"]
