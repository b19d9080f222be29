from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from api.app import create_app
from engine.settings import Settings
from tests.integration.api.conftest import operator_token, unique_sku

__all__ = ["operator_token"]


@dataclass
class Shop:
    """A product with imported keys, and an agent with a key and a deposit."""

    client: httpx.AsyncClient
    operator: dict[str, str]
    sku: str
    codes: list[str]
    agent_id: int
    api_key: str
    price: int

    def agent(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def issue(
        self, quantity: int = 1, *, key: str | None = None, sku: str | None = None
    ) -> httpx.Response:
        return await self.client.post(
            "/v1/issuances",
            json={"sku": sku or self.sku, "quantity": quantity},
            headers={**self.agent(), "Idempotency-Key": key or secrets.token_hex(8)},
        )

    async def balance(self) -> int:
        response = await self.client.get(f"/v1/agents/{self.agent_id}", headers=self.operator)
        balance: int = response.json()["balance"]
        return balance

    async def stock(self) -> dict[str, int]:
        response = await self.client.get(f"/v1/products/{self.sku}", headers=self.operator)
        stock: dict[str, int] = response.json()["stock"]
        return stock


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
            yield c


async def make_shop(
    client: httpx.AsyncClient,
    token: str,
    *,
    keys: int = 50,
    price: int = 1500,
    deposit: int = 1_000_000,
    credit_limit: int = 0,
) -> Shop:
    operator = {"Authorization": f"Bearer {token}"}
    sku = unique_sku("ISS")
    created = await client.post(
        "/v1/products",
        json={"sku": sku, "name": "视频月卡", "type": "card", "price": 1990},
        headers=operator,
    )
    assert created.status_code == 201, created.text
    codes = [f"{sku}-CODE-{i:06d}-{secrets.token_hex(4)}" for i in range(keys)]
    imported = await client.post(
        f"/v1/products/{sku}/batches", json={"codes": codes}, headers=operator
    )
    assert imported.status_code == 201, imported.text
    assert imported.json()["accepted"] == keys
    level = await client.post(
        "/v1/agent-levels",
        json={"name": "gold", "rank": 1, "prices": {sku: price}, "visible_skus": None},
        headers=operator,
    )
    agent = await client.post(
        "/v1/agents",
        json={"name": "agent", "level_id": level.json()["id"], "credit_limit": credit_limit},
        headers=operator,
    )
    agent_id = agent.json()["id"]
    if deposit:
        await client.post(
            f"/v1/agents/{agent_id}/deposits", json={"amount": deposit}, headers=operator
        )
    api_key = (await client.post(f"/v1/agents/{agent_id}/api-keys", headers=operator)).json()["key"]
    return Shop(client, operator, sku, codes, agent_id, api_key, price)


@pytest.fixture
async def shop(app_client: httpx.AsyncClient, operator_token: str) -> Shop:
    return await make_shop(app_client, operator_token)
