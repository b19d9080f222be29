from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from api.app import create_app
from engine.notify.outbox import create_endpoint
from engine.notify.worker import OutboxWorker
from engine.settings import Settings
from tests.integration.api.conftest import client, operator, operator_token

__all__ = ["client", "operator", "operator_token"]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    yield created
    await created.close()


@pytest.fixture(autouse=True)
async def _empty_outbox(db: asyncpg.Connection) -> None:
    """Each test starts with no messages and no endpoints (other areas' tests may have
    left some), so counts in assertions are this test's alone."""
    await db.execute("DELETE FROM outbox")
    await db.execute("DELETE FROM webhook_endpoints")


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Backoff in milliseconds and few attempts, so retries and dead-lettering take no time."""
    return settings.model_copy(
        update={
            "outbox_backoff_base_s": 0.01,
            "outbox_backoff_cap_s": 0.04,
            "outbox_max_attempts": 5,
            "webhook_timeout_s": 2.0,
            "outbox_poll_interval_s": 0.01,
        }
    )


@pytest.fixture
async def fast_operator(fast: Settings, operator_token: str) -> AsyncIterator[httpx.AsyncClient]:
    """The application with `fast` settings (its own outbox worker included), as operator."""
    app = create_app(fast)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://kami.test",
            headers={"Authorization": f"Bearer {operator_token}"},
        ) as c,
    ):
        yield c


async def add_endpoint(
    db: asyncpg.Connection,
    url: str,
    *,
    event_types: list[str] | None = None,
    agent_id: int | None = None,
) -> tuple[int, str]:
    endpoint, secret = await create_endpoint(db, url, event_types=event_types, agent_id=agent_id)
    return endpoint.id, secret


async def status_of(db: asyncpg.Connection, outbox_id: int) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT status, attempts, last_error, message_id, sent_at FROM outbox WHERE id = $1",
        outbox_id,
    )
    assert row is not None
    return row


async def work_until(
    worker: OutboxWorker, done: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0
) -> None:
    """Run worker passes (as run_forever would, without its sleep) until `done`."""
    deadline = time.monotonic() + timeout_s
    while not await done():
        assert time.monotonic() < deadline, "the outbox did not reach the expected state"
        if await worker.run_once() == 0:
            await asyncio.sleep(0.01)
