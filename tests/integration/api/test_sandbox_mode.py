"""Test keys (kami_test_…): the same API over separate stock, balances and issuances.

A test key draws only from batches imported with `"mode": "test"` and pays from the
agent's test balance; a live key never sees test stock. Both directions are checked,
with the pools, the balances, the stock counts and each mode's trial balance.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from engine.inventory.pools import pool_name
from engine.settings import Settings
from tests.integration.api.conftest import unique_sku

PRICE = 700


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI, operator_token: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://kami.test",
        headers={"Authorization": f"Bearer {operator_token}"},
    ) as c:
        yield c


@dataclass
class Sandbox:
    client: httpx.AsyncClient
    sku: str
    live_codes: set[str]
    test_codes: set[str]
    agent_id: int
    live_key: str
    test_key: str

    async def issue(
        self, key: str, quantity: int = 1, idempotency_key: str | None = None
    ) -> httpx.Response:
        return await self.client.post(
            "/v1/issuances",
            json={"sku": self.sku, "quantity": quantity},
            headers={
                "Authorization": f"Bearer {key}",
                "Idempotency-Key": idempotency_key or secrets.token_hex(8),
            },
        )

    async def agent(self) -> dict[str, int]:
        body = (await self.client.get(f"/v1/agents/{self.agent_id}")).json()
        return {"balance": body["balance"], "test_balance": body["test_balance"]}

    async def product(self) -> dict[str, dict[str, int]]:
        body = (await self.client.get(f"/v1/products/{self.sku}")).json()
        return {"stock": body["stock"], "test_stock": body["test_stock"]}


async def _import(client: httpx.AsyncClient, sku: str, count: int, mode: str) -> set[str]:
    codes = {f"{sku}-{mode}-{secrets.token_hex(6)}" for _ in range(count)}
    body: dict[str, object] = {"codes": sorted(codes)}
    if mode != "live":
        body["mode"] = mode
    response = await client.post(f"/v1/products/{sku}/batches", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["accepted"] == count
    return codes


async def _sandbox(
    client: httpx.AsyncClient, *, live: int = 5, test: int = 3, test_deposit: int = 10_000
) -> Sandbox:
    sku = unique_sku("SBX")
    created = await client.post(
        "/v1/products", json={"sku": sku, "name": "测试卡", "type": "card", "price": 990}
    )
    assert created.status_code == 201, created.text
    live_codes = await _import(client, sku, live, "live") if live else set()
    test_codes = await _import(client, sku, test, "test") if test else set()
    level = await client.post(
        "/v1/agent-levels", json={"name": "gold", "rank": 1, "prices": {sku: PRICE}}
    )
    agent = await client.post("/v1/agents", json={"name": "a", "level_id": level.json()["id"]})
    agent_id = agent.json()["id"]
    await client.post(f"/v1/agents/{agent_id}/deposits", json={"amount": 100_000})
    if test_deposit:
        deposit = await client.post(
            f"/v1/agents/{agent_id}/deposits", json={"amount": test_deposit, "mode": "test"}
        )
        assert deposit.status_code == 201, deposit.text
        assert deposit.json()["balance"] == test_deposit
    live_key = (await client.post(f"/v1/agents/{agent_id}/api-keys")).json()["key"]
    created_test = await client.post(f"/v1/agents/{agent_id}/api-keys", json={"mode": "test"})
    assert created_test.status_code == 201
    test_key = created_test.json()["key"]
    assert live_key.startswith("kami_live_") and test_key.startswith("kami_test_")
    return Sandbox(client, sku, live_codes, test_codes, agent_id, live_key, test_key)


async def test_a_test_key_draws_test_stock_and_spends_the_test_balance(
    client: httpx.AsyncClient,
) -> None:
    box = await _sandbox(client)
    response = await box.issue(box.test_key, 2)
    assert response.status_code == 201, response.text
    codes = {k["code"] for k in response.json()["keys"]}
    assert codes <= box.test_codes
    assert await box.agent() == {"balance": 100_000, "test_balance": 10_000 - 2 * PRICE}
    assert await box.product() == {
        "stock": {"available": 5, "held": 0, "issued": 0},
        "test_stock": {"available": 1, "held": 0, "issued": 2},
    }
    # The owner reads it back with a test key, never with a live one.
    issuance_id = response.json()["id"]
    own = await client.get(
        f"/v1/issuances/{issuance_id}", headers={"Authorization": f"Bearer {box.test_key}"}
    )
    assert own.status_code == 200 and {k["code"] for k in own.json()["keys"]} == codes
    other = await client.get(
        f"/v1/issuances/{issuance_id}", headers={"Authorization": f"Bearer {box.live_key}"}
    )
    assert other.status_code == 404 and other.json()["code"] == "issuance_not_found"


async def test_a_live_key_never_sees_test_stock(client: httpx.AsyncClient) -> None:
    box = await _sandbox(client, live=2, test=5)
    issued: set[str] = set()
    for _ in range(2):
        response = await box.issue(box.live_key)
        assert response.status_code == 201, response.text
        issued |= {k["code"] for k in response.json()["keys"]}
    assert issued == box.live_codes
    # Live stock is gone; five test keys remain, and a live key still gets none of them.
    empty = await box.issue(box.live_key)
    assert empty.status_code == 409 and empty.json()["code"] == "out_of_stock"
    assert await box.agent() == {"balance": 100_000 - 2 * PRICE, "test_balance": 10_000}
    assert (await box.product())["test_stock"] == {"available": 5, "held": 0, "issued": 0}


async def test_a_test_key_never_sees_live_stock(client: httpx.AsyncClient) -> None:
    box = await _sandbox(client, live=5, test=1)
    first = await box.issue(box.test_key)
    assert first.status_code == 201
    assert {k["code"] for k in first.json()["keys"]} == box.test_codes
    empty = await box.issue(box.test_key)
    assert empty.status_code == 409 and empty.json()["code"] == "out_of_stock"
    assert (await box.product())["stock"] == {"available": 5, "held": 0, "issued": 0}
    assert (await box.agent())["balance"] == 100_000


async def test_test_money_and_live_money_do_not_mix(client: httpx.AsyncClient) -> None:
    # A rich live balance pays nothing for a test key.
    box = await _sandbox(client, test_deposit=0)
    broke = await box.issue(box.test_key)
    assert broke.status_code == 402 and broke.json()["code"] == "insufficient_balance"
    assert (await box.product())["test_stock"]["available"] == 3
    await client.post(f"/v1/agents/{box.agent_id}/deposits", json={"amount": PRICE, "mode": "test"})
    assert (await box.issue(box.test_key)).status_code == 201
    assert await box.agent() == {"balance": 100_000, "test_balance": 0}
    # Each mode's accounts balance on their own.
    for mode in ("live", "test"):
        totals = (await client.get("/v1/ledger/trial-balance", params={"mode": mode})).json()
        assert totals["balanced"] is True, (mode, totals)
    assert (await client.get("/v1/ledger/trial-balance")).json()["balanced"] is True
    bad = await client.get("/v1/ledger/trial-balance", params={"mode": "demo"})
    assert bad.status_code == 422


async def test_one_idempotency_key_in_each_mode_is_two_requests(
    client: httpx.AsyncClient,
) -> None:
    box = await _sandbox(client)
    key = secrets.token_hex(8)
    live = await box.issue(box.live_key, idempotency_key=key)
    test = await box.issue(box.test_key, idempotency_key=key)
    assert live.status_code == test.status_code == 201
    assert live.json()["id"] != test.json()["id"]
    assert {k["code"] for k in live.json()["keys"]} <= box.live_codes
    assert {k["code"] for k in test.json()["keys"]} <= box.test_codes
    # And each replays as itself.
    again = await box.issue(box.test_key, idempotency_key=key)
    assert again.json() == test.json()


async def test_a_lost_test_pool_is_rebuilt_from_test_stock_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    box = await _sandbox(client, live=4, test=2)
    pool = app.state.runtime.pool
    assert await pool.stock(pool_name(box.sku, "test")) == (2, 0, 0)
    assert await pool.stock(box.sku) == (4, 0, 0)
    await pool.drain(pool_name(box.sku, "test"))
    response = await box.issue(box.test_key, 2)
    assert response.status_code == 201, response.text
    assert {k["code"] for k in response.json()["keys"]} == box.test_codes
    assert await pool.stock(pool_name(box.sku, "test")) == (0, 0, 2)
    assert await pool.stock(box.sku) == (4, 0, 0)


async def test_a_bad_mode_is_refused_and_changes_nothing(client: httpx.AsyncClient) -> None:
    box = await _sandbox(client)
    batch = await client.post(
        f"/v1/products/{box.sku}/batches", json={"codes": ["X-1"], "mode": "staging"}
    )
    deposit = await client.post(
        f"/v1/agents/{box.agent_id}/deposits", json={"amount": 5, "mode": "staging"}
    )
    assert batch.status_code == deposit.status_code == 422
    assert await box.product() == {
        "stock": {"available": 5, "held": 0, "issued": 0},
        "test_stock": {"available": 3, "held": 0, "issued": 0},
    }
    assert await box.agent() == {"balance": 100_000, "test_balance": 10_000}


# ---------------------------------------------------------------------------- test orders


@pytest.fixture
async def shop_client(settings: Settings, operator_token: str) -> AsyncIterator[httpx.AsyncClient]:
    """An app with the sandbox payment provider on (test orders pay there only)."""
    app = create_app(settings.model_copy(update={"sandbox": True}))
    async with app.router.lifespan_context(app):
        ip = "10.7." + ".".join(str(secrets.randbelow(256)) for _ in range(2))
        transport = httpx.ASGITransport(app=app, client=(ip, 5000))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://kami.test",
            headers={"Authorization": f"Bearer {operator_token}"},
        ) as c:
            yield c


async def _place(
    client: httpx.AsyncClient,
    sku: str,
    quantity: int,
    key: str | None,
    *,
    store: str | None = None,
    payment_method: str = "sandbox",
) -> httpx.Response:
    body: dict[str, object] = {
        "sku": sku,
        "quantity": quantity,
        "contact": {"email": f"t-{secrets.token_hex(4)}@example.com"},
        "payment_method": payment_method,
    }
    if store is not None:
        body["store"] = store
    # A buyer sends no credentials: drop the operator's default header, or send the key.
    headers = {"Authorization": f"Bearer {key}"} if key else {"Authorization": ""}
    return await client.post("/v1/orders", json=body, headers=headers)


async def test_a_test_key_places_test_orders_on_test_stock(
    shop_client: httpx.AsyncClient,
) -> None:
    client = shop_client
    box = await _sandbox(client, live=3, test=2)
    order = await _place(client, box.sku, 2, box.test_key)
    assert order.status_code == 201, order.text
    no, token = order.json()["order_no"], order.json()["lookup_token"]
    assert (await box.product())["stock"] == {"available": 3, "held": 0, "issued": 0}
    paid = await client.post(f"/v1/payments/sandbox/{no}/pay")
    assert paid.json()["result"] == "delivered", paid.text
    view = (await client.get(f"/v1/orders/{no}", params={"token": token})).json()
    assert set(view["keys"]) == box.test_codes
    assert await box.product() == {
        "stock": {"available": 3, "held": 0, "issued": 0},
        "test_stock": {"available": 0, "held": 0, "issued": 2},
    }
    # Test stock is gone; a live order still gets live stock, a test order nothing.
    sold_out = await _place(client, box.sku, 1, box.test_key)
    assert sold_out.status_code == 409 and sold_out.json()["code"] == "out_of_stock"
    live = await _place(client, box.sku, 1, None)
    assert live.status_code == 201, live.text
    await client.post(f"/v1/payments/sandbox/{live.json()['order_no']}/pay")
    live_view = (
        await client.get(
            f"/v1/orders/{live.json()['order_no']}",
            params={"token": live.json()["lookup_token"]},
        )
    ).json()
    assert set(live_view["keys"]) <= box.live_codes
    for mode in ("live", "test"):
        totals = (await client.get("/v1/ledger/trial-balance", params={"mode": mode})).json()
        assert totals["balanced"] is True, (mode, totals)

    refund = await client.post(f"/v1/orders/{no}/refund", json={"reason": "sandbox"})
    assert refund.status_code == 200, refund.text
    for mode in ("live", "test"):
        totals = (await client.get("/v1/ledger/trial-balance", params={"mode": mode})).json()
        assert totals["balanced"] is True, (mode, totals)


async def test_a_test_store_order_credits_test_balances_only(
    shop_client: httpx.AsyncClient,
) -> None:
    client = shop_client
    box = await _sandbox(client, live=1, test=2)
    slug = f"sbx-{secrets.token_hex(3)}"
    store = await client.post(
        f"/v1/agents/{box.agent_id}/store",
        json={"slug": slug, "title": "沙盒店", "prices": {box.sku: PRICE + 300}},
    )
    assert store.status_code == 201, store.text
    before = await box.agent()
    order = await _place(client, box.sku, 2, box.test_key, store=slug)
    assert order.status_code == 201, order.text
    await client.post(f"/v1/payments/sandbox/{order.json()['order_no']}/pay")
    after = await box.agent()
    # The margin 2 x 300 lands in the test balance; the live balance does not move.
    assert after == {"balance": before["balance"], "test_balance": before["test_balance"] + 600}


async def test_test_orders_never_use_real_providers_or_bad_keys(
    shop_client: httpx.AsyncClient,
) -> None:
    client = shop_client
    box = await _sandbox(client, live=1, test=1)
    real = await _place(client, box.sku, 1, box.test_key, payment_method="alipay")
    assert real.status_code == 422 and real.json()["code"] == "payment_method_unavailable"
    forged = await _place(client, box.sku, 1, "kami_test_" + secrets.token_urlsafe(32))
    assert forged.status_code == 401 and forged.json()["code"] == "unauthenticated"
    assert (await box.product())["test_stock"] == {"available": 1, "held": 0, "issued": 0}


async def test_a_promoter_is_paid_sandbox_money_on_a_test_order(
    shop_client: httpx.AsyncClient,
) -> None:
    client = shop_client
    box = await _sandbox(client, live=1, test=1)
    level = (await client.get(f"/v1/agents/{box.agent_id}")).json()["level_id"]
    promoter = (await client.post("/v1/agents", json={"name": "p", "level_id": level})).json()
    created = await client.post("/v1/promoters", json={"agent_id": promoter["id"], "per_unit": 90})
    assert created.status_code == 201, created.text
    body = {
        "sku": box.sku,
        "quantity": 1,
        "contact": {"email": f"t-{secrets.token_hex(4)}@example.com"},
        "payment_method": "sandbox",
        "promoter": created.json()["code"],
    }
    order = await client.post(
        "/v1/orders", json=body, headers={"Authorization": f"Bearer {box.test_key}"}
    )
    assert order.status_code == 201, order.text
    await client.post(f"/v1/payments/sandbox/{order.json()['order_no']}/pay")
    paid = (await client.get(f"/v1/agents/{promoter['id']}")).json()
    assert (paid["balance"], paid["test_balance"]) == (0, 90)
    # Its live earnings do not count sandbox money; the order is listed as a test one.
    seen = (await client.get(f"/v1/promoters/{promoter['id']}")).json()["earnings"]
    assert seen == {"earned": 0, "pending": 0, "reversed": 0, "orders": 0}
    listed = (await client.get(f"/v1/promoters/{promoter['id']}/orders")).json()["data"]
    assert [(o["mode"], o["commission"]) for o in listed] == [("test", 90)]
