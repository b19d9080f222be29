from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from api.app import create_app
from engine.auth import hash_secret, new_operator_token
from engine.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real application, lifespan included, over an in-process ASGI transport."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
            yield c


@pytest.fixture
async def operator_token(database_url: str) -> str:
    """A fresh operator token, stored only as its hash like every real one."""
    token = new_operator_token()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO operator_tokens (name, role, token_hash) VALUES ('test', 'operator', $1)",
            hash_secret(token),
        )
    finally:
        await conn.close()
    return token


@pytest.fixture
def operator(client: httpx.AsyncClient, operator_token: str) -> httpx.AsyncClient:
    client.headers["Authorization"] = f"Bearer {operator_token}"
    return client


def unique_sku(prefix: str = "T") -> str:
    return f"{prefix}-{secrets.token_hex(5).upper()}"
