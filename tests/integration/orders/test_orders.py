"""Storefront orders end to end through the real app: order, pay, deliver, expire, refund.

Real PostgreSQL and Redis; payments through the sandbox provider's signed callbacks, the
same path as a real provider's.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI

from api.app import create_app
from engine.orders.service import OrderService, utcnow
from engine.payments.sandbox import SandboxProvider
from engine.settings import Settings
from tests.integration.api.conftest import unique_sku
from tests.integration.orders.conftest import random_ip

PRICE = 1990


async def _stocked(operator: httpx.AsyncClient, count: int) -> tuple[str, set[str]]:
    sku = unique_sku("O")
    created = await operator.post(
        "/v1/products", json={"sku": sku, "name": "视频月卡", "type": "card", "price": PRICE}
    )
    assert created.status_code == 201, created.text
    codes = {f"{sku}-{secrets.token_hex(6)}" for _ in range(count)}
    batch = await operator.post(f"/v1/products/{sku}/batches", json={"codes": sorted(codes)})
    assert batch.status_code == 201, batch.text
    return sku, codes


def _email() -> dict[str, str]:
    return {"email": f"buyer-{secrets.token_hex(4)}@example.com"}


async def _order(
    buyer: httpx.AsyncClient, sku: str, quantity: int = 1, contact: dict[str, str] | None = None
) -> httpx.Response:
    return await buyer.post(
        "/v1/orders",
        json={
            "sku": sku,
            "quantity": quantity,
            "contact": contact or _email(),
            "payment_method": "sandbox",
        },
    )


def _service(app: FastAPI) -> OrderService:
    service: OrderService = app.state.orders
    return service


def _sandbox(app: FastAPI) -> SandboxProvider:
    provider = _service(app).providers["sandbox"]
    assert isinstance(provider, SandboxProvider)
    return provider


async def _stock(operator: httpx.AsyncClient, sku: str) -> dict[str, int]:
    stock: dict[str, int] = (await operator.get(f"/v1/products/{sku}")).json()["stock"]
    return stock


async def _balanced(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        total = await conn.fetchval("SELECT coalesce(sum(amount), 0) FROM journal_lines")
        return bool(total == 0)
    finally:
        await conn.close()


async def test_order_pay_and_deliver(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    sku, codes = await _stocked(operator, 5)
    response = await _order(buyer, sku, quantity=2)
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "pending_payment"
    assert (order["amount"], order["currency"]) == (2 * PRICE, "CNY")
    assert order["pay_url"].endswith(f"/v1/payments/sandbox/{order['order_no']}/pay")
    no, token = order["order_no"], order["lookup_token"]

    pending = await buyer.get(f"/v1/orders/{no}", params={"token": token})
    assert pending.status_code == 200
    assert pending.json()["status"] == "pending_payment" and "keys" not in pending.json()
    assert await _stock(operator, sku) == {"available": 5, "held": 0, "issued": 0}

    # A wrong token and an unknown order are the same 404.
    wrong = await buyer.get(f"/v1/orders/{no}", params={"token": "nope"})
    missing = await buyer.get("/v1/orders/20260101000000ABCDEF0123456789", params={"token": "x"})
    assert wrong.status_code == missing.status_code == 404
    assert wrong.json()["code"] == missing.json()["code"] == "order_not_found"
    assert wrong.json()["detail"] == missing.json()["detail"]

    paid = await buyer.post(f"/v1/payments/sandbox/{no}/pay")
    assert paid.status_code == 200, paid.text
    assert paid.json()["result"] == "delivered"
    delivered = (await buyer.get(f"/v1/orders/{no}", params={"token": token})).json()
    assert delivered["status"] == "delivered"
    assert len(delivered["keys"]) == 2 and set(delivered["keys"]) <= codes
    assert await _stock(operator, sku) == {"available": 3, "held": 0, "issued": 2}
    assert await _balanced(database_url)

    conn = await asyncpg.connect(database_url)
    try:
        outbox = await conn.fetch(
            "SELECT kind, topic, payload::text AS payload FROM outbox WHERE payload::text LIKE $1",
            f"%{no}%",
        )
        revealed = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'order.keys_revealed' AND subject = $1",
            f"order:{no}",
        )
    finally:
        await conn.close()
    emails = [r for r in outbox if r["kind"] == "email"]
    assert [r["topic"] for r in emails] == ["order_delivered"]
    # The email carries a link, never a key.
    assert not any(code in r["payload"] for r in outbox for code in codes)
    assert revealed == 1


async def test_reveal_link_works_once(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    sku, codes = await _stocked(operator, 2)
    order = (await _order(buyer, sku)).json()
    await buyer.post(f"/v1/payments/sandbox/{order['order_no']}/pay")
    conn = await asyncpg.connect(database_url)
    try:
        payload = await conn.fetchval(
            "SELECT payload FROM outbox WHERE kind = 'email' AND payload->>'order_no' = $1",
            order["order_no"],
        )
    finally:
        await conn.close()
    url = orjson.loads(payload)["reveal_url"]
    path = url[url.index("/v1/") :]
    first = await buyer.get(path)
    assert first.status_code == 200, first.text
    assert set(first.json()["keys"]) <= codes
    again = await buyer.get(path)
    assert again.status_code == 404 and again.json()["code"] == "order_not_found"


async def test_a_replayed_callback_delivers_once(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    sku, _ = await _stocked(operator, 3)
    order = (await _order(buyer, sku, quantity=2)).json()
    signed = _sandbox(app).sign_payment(order["order_no"], 2 * PRICE, "CNY", "TRADE-REPLAY-1")
    replies = await asyncio.gather(
        *(
            buyer.post("/v1/payments/sandbox/notify", content=signed.body, headers=signed.headers)
            for _ in range(10)
        )
    )
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    conn = await asyncpg.connect(database_url)
    try:
        payments = await conn.fetchval(
            "SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id "
            "WHERE o.order_no = $1",
            order["order_no"],
        )
        delivered = await conn.fetchval(
            "SELECT count(*) FROM order_keys k JOIN orders o ON o.id = k.order_id "
            "WHERE o.order_no = $1",
            order["order_no"],
        )
    finally:
        await conn.close()
    assert (payments, delivered) == (1, 2)
    assert await _stock(operator, sku) == {"available": 1, "held": 0, "issued": 2}
    assert await app.state.runtime.pool.stock(sku) == (1, 0, 2)
    assert await _balanced(database_url)


@pytest.mark.parametrize("forgery", ["signature", "amount", "currency"])
async def test_forged_or_wrong_callbacks_change_nothing(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, forgery: str
) -> None:
    sku, _ = await _stocked(operator, 2)
    order = (await _order(buyer, sku)).json()
    amount, currency = PRICE, "CNY"
    if forgery == "amount":
        amount = 1
    if forgery == "currency":
        currency = "USD"
    signed = _sandbox(app).sign_payment(order["order_no"], amount, currency, "T-FORGED")
    headers = dict(signed.headers)
    if forgery == "signature":
        headers = {k: ("0" * 64 if "signature" in k.lower() else v) for k, v in headers.items()}
    reply = await buyer.post("/v1/payments/sandbox/notify", content=signed.body, headers=headers)
    assert reply.status_code >= 400
    state = await buyer.get(
        f"/v1/orders/{order['order_no']}", params={"token": order["lookup_token"]}
    )
    assert state.json()["status"] == "pending_payment"
    assert await _stock(operator, sku) == {"available": 2, "held": 0, "issued": 0}


async def test_reservation_caps_stop_stock_freezing(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    sku, _ = await _stocked(operator, 20)
    contact = _email()
    for _ in range(3):
        assert (await _order(buyer, sku, contact=contact)).status_code == 201
    fourth = await _order(buyer, sku, contact=contact)
    assert fourth.status_code == 429
    assert fourth.json()["code"] == "reservation_limit"
    assert "Retry-After" in fourth.headers
    # Units count too: 3 + 8 > 10 for a fresh contact that already holds 3 units.
    other = _email()
    assert (await _order(buyer, sku, quantity=3, contact=other)).status_code == 201
    too_many = await _order(buyer, sku, quantity=8, contact=other)
    assert too_many.status_code == 429
    # What the refused orders would have held is still in the pool.
    assert await app.state.runtime.pool.stock(sku) == (14, 6, 0)


async def test_unpaid_orders_expire_and_late_payments_are_handled(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    sku, _ = await _stocked(operator, 1)
    service = _service(app)
    first = (await _order(buyer, sku)).json()
    second_contact = _email()
    out_of_stock = await _order(buyer, sku, contact=second_contact)
    assert out_of_stock.status_code == 409 and out_of_stock.json()["code"] == "out_of_stock"

    later = utcnow() + timedelta(hours=1)
    service._clock = lambda: later  # the sweeper's view of time
    try:
        assert await service.expire_due() >= 1
    finally:
        service._clock = utcnow
    state = await buyer.get(
        f"/v1/orders/{first['order_no']}", params={"token": first["lookup_token"]}
    )
    assert state.json()["status"] == "expired"
    assert await app.state.runtime.pool.stock(sku) == (1, 0, 0)

    # Someone else buys the key; then the first buyer's payment arrives.
    second = (await _order(buyer, sku, contact=second_contact)).json()
    assert (await buyer.post(f"/v1/payments/sandbox/{second['order_no']}/pay")).json()[
        "result"
    ] == "delivered"
    late = await buyer.post(f"/v1/payments/sandbox/{first['order_no']}/pay")
    assert late.json()["result"] == "refund_due"
    state = await buyer.get(
        f"/v1/orders/{first['order_no']}", params={"token": first["lookup_token"]}
    )
    assert state.json()["status"] == "paid" and "keys" not in state.json()
    assert await _balanced(database_url)

    # The operator refunds it: the money goes back, nothing else moves.
    refund = await operator.post(
        f"/v1/orders/{first['order_no']}/refund", json={"reason": "stock sold out"}
    )
    assert refund.status_code == 200, refund.text
    assert refund.json()["status"] == "refunded"
    assert await _balanced(database_url)


async def test_a_late_payment_with_stock_left_is_delivered(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    sku, codes = await _stocked(operator, 2)
    service = _service(app)
    order = (await _order(buyer, sku)).json()
    later = utcnow() + timedelta(hours=1)
    service._clock = lambda: later
    try:
        await service.expire_due()
    finally:
        service._clock = utcnow
    paid = await buyer.post(f"/v1/payments/sandbox/{order['order_no']}/pay")
    assert paid.json()["result"] == "delivered"
    view = (
        await buyer.get(f"/v1/orders/{order['order_no']}", params={"token": order["lookup_token"]})
    ).json()
    assert view["status"] == "delivered" and set(view["keys"]) <= codes


async def test_refund_revokes_keys_and_reverses_the_sale(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    sku, _ = await _stocked(operator, 3)
    order = (await _order(buyer, sku, quantity=2)).json()
    await buyer.post(f"/v1/payments/sandbox/{order['order_no']}/pay")
    refund = await operator.post(
        f"/v1/orders/{order['order_no']}/refund", json={"reason": "buyer complaint"}
    )
    assert refund.status_code == 200, refund.text
    assert refund.json()["status"] == "refunded"
    again = await operator.post(
        f"/v1/orders/{order['order_no']}/refund", json={"reason": "buyer complaint"}
    )
    assert again.status_code == 409 and again.json()["code"] == "invalid_order_state"
    conn = await asyncpg.connect(database_url)
    try:
        states = await conn.fetch(
            "SELECT k.state FROM order_keys ok JOIN card_keys k ON k.id = ok.card_key_id "
            "JOIN orders o ON o.id = ok.order_id WHERE o.order_no = $1",
            order["order_no"],
        )
        revenue = await conn.fetchval(
            "SELECT coalesce(sum(l.amount), 0) FROM journal_lines l JOIN journal_entries e "
            "ON e.id = l.entry_id WHERE e.reference = $1",
            order["order_no"],
        )
    finally:
        await conn.close()
    assert [r["state"] for r in states] == ["revoked", "revoked"]
    assert revenue == 0
    # Revoked keys never go back to the pool.
    assert await app.state.runtime.pool.stock(sku) == (1, 0, 2)
    assert await _balanced(database_url)


async def test_the_buyer_can_cancel_an_unpaid_order(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    sku, _ = await _stocked(operator, 1)
    order = (await _order(buyer, sku)).json()
    cancelled = await buyer.post(
        f"/v1/orders/{order['order_no']}/cancel", params={"token": order["lookup_token"]}
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert await app.state.runtime.pool.stock(sku) == (1, 0, 0)
    again = await buyer.post(
        f"/v1/orders/{order['order_no']}/cancel", params={"token": order["lookup_token"]}
    )
    assert again.status_code == 409


async def test_failed_lookups_are_rate_limited(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    sku, _ = await _stocked(operator, 1)
    order = (await _order(buyer, sku)).json()
    for _ in range(20):
        miss = await buyer.get(f"/v1/orders/{order['order_no']}", params={"token": "guess"})
        assert miss.status_code == 404
    limited = await buyer.get(
        f"/v1/orders/{order['order_no']}", params={"token": order["lookup_token"]}
    )
    assert limited.status_code == 429 and limited.json()["code"] == "lookup_rate_limited"


async def test_concurrent_orders_never_oversell(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    sku, codes = await _stocked(operator, 20)
    responses = await asyncio.gather(*(_order(buyer, sku) for _ in range(30)))
    created = [r.json() for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code != 201]
    assert len(created) == 20
    assert {r.json()["code"] for r in refused} == {"out_of_stock"}
    await asyncio.gather(
        *(buyer.post(f"/v1/payments/sandbox/{o['order_no']}/pay") for o in created)
    )
    keys: list[str] = []
    for o in created:
        view = (
            await buyer.get(f"/v1/orders/{o['order_no']}", params={"token": o["lookup_token"]})
        ).json()
        keys.extend(view["keys"])
    assert len(keys) == len(set(keys)) == 20 and set(keys) == codes
    assert await _balanced(database_url)


async def test_bad_orders_are_422_and_hold_nothing(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    sku, _ = await _stocked(operator, 2)
    bad = [
        {"sku": sku, "quantity": 0, "contact": _email(), "payment_method": "sandbox"},
        {"sku": sku, "quantity": 1, "contact": {}, "payment_method": "sandbox"},
        {"sku": sku, "quantity": 1, "contact": {"email": "no-at"}, "payment_method": "sandbox"},
        {"sku": sku, "quantity": 1, "contact": _email(), "payment_method": "bitcoin"},
        {"sku": sku, "quantity": 1, "contact": _email(), "payment_method": "sandbox", "x": 1},
    ]
    for body in bad:
        response = await buyer.post("/v1/orders", json=body)
        assert response.status_code == 422, (body, response.text)
    unknown = await _order(buyer, "NO-SUCH-SKU")
    assert unknown.status_code == 404
    disabled = await buyer.post(
        "/v1/orders",
        json={"sku": sku, "quantity": 1, "contact": _email(), "payment_method": "alipay"},
    )
    assert disabled.status_code == 422 and disabled.json()["code"] == "payment_method_unavailable"
    assert await app.state.runtime.pool.stock(sku) == (2, 0, 0)


async def test_a_confirmed_hold_without_a_delivery_goes_back_to_the_pool(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    from engine.issuance.reconciler import Reconciler

    sku, _ = await _stocked(operator, 3)
    crashed = (await _order(buyer, sku)).json()
    delivered = (await _order(buyer, sku)).json()
    await buyer.post(f"/v1/payments/sandbox/{delivered['order_no']}/pay")
    pool = app.state.runtime.pool
    # A worker confirmed this order's hold, then died before its transaction committed.
    await pool.confirm(sku, "ord:" + crashed["order_no"])
    assert await pool.stock(sku) == (1, 0, 2)
    now = [0.0]
    reconciler = Reconciler(app.state.runtime.db, pool, grace_s=30, clock=lambda: now[0])
    assert await reconciler.run_once(wait=True) == 0  # first sighting: maybe still committing
    now[0] = 31.0
    # At least this one: the reconciler sweeps the whole namespace, which other tests of
    # the session share; the stock of this SKU is what tells.
    assert await reconciler.run_once(wait=True) >= 1
    # The delivered order keeps its keys; the crashed one's key is back.
    assert await pool.stock(sku) == (2, 0, 1)


async def test_a_sub_store_sells_at_its_price_and_credits_the_agent(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    sku, _ = await _stocked(operator, 2)
    hidden, _ = await _stocked(operator, 1)
    top = await operator.post(
        "/v1/agent-levels",
        json={"name": "省代", "rank": 2, "prices": {sku: 1000}, "visible_skus": [sku]},
    )
    parent = await operator.post("/v1/agents", json={"name": "老李", "level_id": top.json()["id"]})
    parent_id = parent.json()["id"]
    level = await operator.post(
        "/v1/agent-levels",
        json={"name": "市代", "rank": 1, "prices": {sku: 1500}, "visible_skus": [sku]},
    )
    agent = await operator.post(
        "/v1/agents",
        json={"name": "小王", "level_id": level.json()["id"], "parent_id": parent_id},
    )
    agent_id = agent.json()["id"]
    slug = f"wang-{secrets.token_hex(3)}"
    cheap = await operator.post(
        f"/v1/agents/{agent_id}/store",
        json={"slug": slug, "title": "小王的店", "prices": {sku: 1400}},
    )
    assert cheap.status_code == 409 and cheap.json()["code"] == "price_below_cost"
    store = await operator.post(
        f"/v1/agents/{agent_id}/store",
        json={"slug": slug, "title": "小王的店", "prices": {sku: 2500}},
    )
    assert store.status_code == 201, store.text
    listed = (await buyer.get(f"/v1/stores/{slug}")).json()
    assert [(i["sku"], i["price"]) for i in listed["items"]] == [(sku, 2500)]

    order = await buyer.post(
        "/v1/orders",
        json={"sku": sku, "quantity": 2, "contact": _email(), "payment_method": "sandbox",
              "store": slug},
    )  # fmt: skip
    assert order.status_code == 201, order.text
    assert order.json()["amount"] == 5000
    await buyer.post(f"/v1/payments/sandbox/{order.json()['order_no']}/pay")
    # At once (秒结): the seller earns its margin, 2 x (2500 - 1500), and its parent the
    # differential, 2 x (1500 - 1000); the platform keeps 2 x 1000.
    assert (await operator.get(f"/v1/agents/{agent_id}")).json()["balance"] == 2000
    assert (await operator.get(f"/v1/agents/{parent_id}")).json()["balance"] == 1000
    assert await _balanced(database_url)
    # A refund takes the commissions back with the sale.
    refunded = await operator.post(
        f"/v1/orders/{order.json()['order_no']}/refund", json={"reason": "test"}
    )
    assert refunded.status_code == 200, refunded.text
    assert (await operator.get(f"/v1/agents/{agent_id}")).json()["balance"] == 0
    assert (await operator.get(f"/v1/agents/{parent_id}")).json()["balance"] == 0
    assert await _balanced(database_url)

    not_sold = await buyer.post(
        "/v1/orders",
        json={"sku": hidden, "quantity": 1, "contact": _email(), "payment_method": "sandbox",
              "store": slug},
    )  # fmt: skip
    assert not_sold.status_code == 403
    no_store = await buyer.post(
        "/v1/orders",
        json={"sku": sku, "quantity": 1, "contact": _email(), "payment_method": "sandbox",
              "store": "no-such-store"},
    )  # fmt: skip
    assert no_store.status_code == 404 and no_store.json()["code"] == "store_not_found"


async def test_a_buyer_finds_orders_with_a_code_sent_to_the_address(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    sku, codes = await _stocked(operator, 2)
    contact = _email()
    order = (await _order(buyer, sku, contact=contact)).json()
    await buyer.post(f"/v1/payments/sandbox/{order['order_no']}/pay")

    sent = await buyer.post("/v1/orders/lookup-codes", json={"email": contact["email"]})
    nobody = await buyer.post("/v1/orders/lookup-codes", json={"email": "none@example.com"})
    # The same answer whether the address has orders or not.
    assert sent.status_code == nobody.status_code == 202
    assert sent.json() == nobody.json()
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT email_to, payload FROM outbox WHERE topic = 'order_lookup_code' "
            "AND email_to = ANY($1::text[])",
            [contact["email"], "none@example.com"],
        )
    finally:
        await conn.close()
    assert [r["email_to"] for r in rows] == [contact["email"]]
    code = orjson.loads(rows[0]["payload"])["verification_code"]

    wrong = await buyer.post(
        "/v1/orders/lookup",
        json={"email": contact["email"], "code": "000000" if code != "000000" else "111111"},
    )
    assert wrong.status_code == 404 and wrong.json()["code"] == "order_not_found"
    found = await buyer.post("/v1/orders/lookup", json={"email": contact["email"], "code": code})
    assert found.status_code == 200, found.text
    [listed] = found.json()["data"]
    assert listed["order_no"] == order["order_no"] and set(listed["keys"]) <= codes
    # The code works once.
    again = await buyer.post("/v1/orders/lookup", json={"email": contact["email"], "code": code})
    assert again.status_code == 404


async def test_a_tree_priced_out_of_order_cannot_sell(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    sku, _ = await _stocked(operator, 1)
    # The parent pays more per key than its child: no differential can be paid from that.
    top = await operator.post(
        "/v1/agent-levels",
        json={"name": "贵", "rank": 2, "prices": {sku: 1800}, "visible_skus": None},
    )
    low = await operator.post(
        "/v1/agent-levels",
        json={"name": "便宜", "rank": 1, "prices": {sku: 1200}, "visible_skus": None},
    )
    parent = await operator.post("/v1/agents", json={"name": "P", "level_id": top.json()["id"]})
    child = await operator.post(
        "/v1/agents",
        json={"name": "C", "level_id": low.json()["id"], "parent_id": parent.json()["id"]},
    )
    slug = f"c-{secrets.token_hex(3)}"
    store = await operator.post(
        f"/v1/agents/{child.json()['id']}/store", json={"slug": slug, "title": "C", "prices": {}}
    )
    assert store.status_code == 201, store.text
    refused = await buyer.post(
        "/v1/orders",
        json={"sku": sku, "quantity": 1, "contact": _email(), "payment_method": "sandbox",
              "store": slug},
    )  # fmt: skip
    assert refused.status_code == 409 and refused.json()["code"] == "price_below_cost"
    assert await app.state.runtime.pool.stock(sku) == (1, 0, 0)


@pytest.mark.parametrize("dimension", ["ip", "device"])
async def test_caps_per_ip_and_device(
    order_settings: Settings, operator: httpx.AsyncClient, dimension: str
) -> None:
    limits = (
        {"order_max_unpaid_per_ip": 2} if dimension == "ip" else {"order_max_unpaid_per_device": 2}
    )
    app = create_app(order_settings.model_copy(update=limits))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(random_ip(), 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as buyer:
            sku, _ = await _stocked(operator, 5)
            body = {
                "sku": sku,
                "quantity": 1,
                "payment_method": "sandbox",
                "device": f"dev-{secrets.token_hex(4)}",
            }
            # Different contacts each time: only the IP or the device ties them together.
            codes = [
                (await buyer.post("/v1/orders", json={**body, "contact": _email()})).status_code
                for _ in range(3)
            ]
            assert codes == [201, 201, 429]
