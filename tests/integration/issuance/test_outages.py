"""Stores going away mid-service: clear 503s with Retry-After, nothing issued, nothing lost."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from engine.settings import Settings
from engine.storage.embedded import EmbeddedStores
from engine.storage.migrate import migrate
from tests.integration.core.servers import Server, server_binary
from tests.integration.issuance.conftest import make_shop

pytestmark = pytest.mark.slow


@pytest.fixture
def private_postgres(tmp_path: Path) -> EmbeddedStores:
    stores = EmbeddedStores(tmp_path / "pg", valkey=False).start()
    yield stores
    stores.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Server:
    binary = server_binary()
    if binary is None:
        pytest.skip("no redis-server/valkey-server binary")
    server = Server(binary, tmp_path)
    server.start()
    yield server
    server.kill()


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
            yield c


def _settings(
    database_url: str, redis_url: str, tmp_path: Path, master_key: str | None = None
) -> Settings:
    # A database shared with the session's other tests already holds data keys wrapped by
    # the session's master key; a private database may take a fresh one.
    return Settings(
        database_url=SecretStr(database_url),
        redis_url=SecretStr(redis_url),
        master_key=SecretStr(master_key or base64.b64encode(secrets.token_bytes(32)).decode()),
        redis_namespace=f"outage-{secrets.token_hex(3)}",
        data_dir=tmp_path / "data",
        _env_file=None,  # type: ignore[call-arg]
    )


async def _owner_token(database_url: str) -> str:
    from engine.auth import ensure_owner_token

    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        token = await ensure_owner_token(conn, None)
    finally:
        await conn.close()
    assert token is not None
    return token


async def test_redis_down_is_503_pool_unavailable_and_nothing_is_charged(
    database_url: str, master_key: str, private_redis: Server, tmp_path: Path
) -> None:
    settings = _settings(database_url, private_redis.url, tmp_path, master_key)
    token = await _operator_token(database_url)
    async for client in _client(settings):
        shop = await make_shop(client, token, keys=5)
        assert (await shop.issue(1)).status_code == 201
        private_redis.kill()
        down = await shop.issue(1, key="during-outage")
        assert down.status_code == 503
        assert down.json()["code"] == "pool_unavailable"
        assert down.headers["retry-after"] == "1"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("unavailable")
        assert await shop.balance() == 1_000_000 - shop.price

        # A new, empty Redis: the pool is rebuilt from PostgreSQL and the retry succeeds.
        private_redis.start()
        retried = await shop.issue(1, key="during-outage")
        assert retried.status_code == 201, retried.text
        assert await shop.stock() == {"available": 3, "held": 0, "issued": 2}


async def test_postgres_down_is_503_and_taken_keys_go_back(
    private_postgres: EmbeddedStores, redis_url: str, tmp_path: Path
) -> None:
    assert private_postgres.database_url is not None
    token = await _owner_token(private_postgres.database_url)
    settings = _settings(private_postgres.database_url, redis_url, tmp_path)
    async for client in _client(settings):
        shop = await make_shop(client, token, keys=5)
        assert (await shop.issue(1)).status_code == 201
        from engine._core import Pool

        pool = Pool(redis_url, namespace=settings.redis_namespace)
        assert (await pool.stock(shop.sku))[0] == 4

        private_postgres._stop_postgres()
        down = await shop.issue(1, key="pg-outage")
        assert down.status_code == 503
        assert down.headers["retry-after"] == "1"
        assert down.json()["code"] in {"database_unavailable", "service_unavailable"}
        # Whatever was taken for the failed request is back in the pool.
        assert (await pool.stock(shop.sku))[0] == 4
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["postgres"].startswith("unavailable")


async def _operator_token(database_url: str) -> str:
    from engine.auth import hash_secret, new_operator_token

    token = new_operator_token()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO operator_tokens (name, role, token_hash) "
            "VALUES ('outage', 'operator', $1)",
            hash_secret(token),
        )
    finally:
        await conn.close()
    return token
