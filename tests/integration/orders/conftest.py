"""An app with the sandbox payment provider on, an operator client and a stocked product."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from engine.settings import Settings
from tests.integration.api.conftest import operator_token  # noqa: F401  (a fixture)


def random_ip() -> str:
    return "10." + ".".join(str(secrets.randbelow(256)) for _ in range(3))


@pytest.fixture
def order_settings(settings: Settings) -> Settings:
    # All test buyers share one address: the per-IP caps are lifted, the others stay.
    return settings.model_copy(
        update={
            "sandbox": True,
            "order_lookup_misses_per_minute": 20,
            "order_max_unpaid_per_ip": 1000,
            "order_max_unpaid_units_per_ip": 10000,
        }
    )


@pytest.fixture
async def app(order_settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(order_settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def buyer(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # An address of its own per test: failed lookups are counted per IP for a minute.
    transport = httpx.ASGITransport(app=app, client=(random_ip(), 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
        yield c


@pytest.fixture
async def operator(
    app: FastAPI,
    operator_token: str,  # noqa: F811  (the fixture imported above)
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://kami.test",
        headers={"Authorization": f"Bearer {operator_token}"},
    ) as c:
        yield c
