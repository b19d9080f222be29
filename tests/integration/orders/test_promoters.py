"""Promoters (推广员): orders carry a link code, the commission is part of the sale's split,
credited on payment and reversed by a refund; operators and promoters see the attribution."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg
import httpx
from fastapi import FastAPI

from tests.integration.api.conftest import unique_sku

PRICE = 1990
COST = 1000
RETAIL = 2000


@dataclass
class Network:
    sku: str
    level_id: int
    store_agent: int
    slug: str


def _email() -> dict[str, str]:
    return {"email": f"buyer-{secrets.token_hex(4)}@example.com"}


async def _network(operator: httpx.AsyncClient, keys: int = 10) -> Network:
    sku = unique_sku("PRM")
    created = await operator.post(
        "/v1/products", json={"sku": sku, "name": "会员", "type": "card", "price": PRICE}
    )
    assert created.status_code == 201, created.text
    codes = [f"{sku}-{secrets.token_hex(6)}" for _ in range(keys)]
    assert (
        await operator.post(f"/v1/products/{sku}/batches", json={"codes": codes})
    ).status_code == 201
    level = await operator.post(
        "/v1/agent-levels", json={"name": "市代", "rank": 1, "prices": {sku: COST}}
    )
    level_id = level.json()["id"]
    store_agent = (
        await operator.post("/v1/agents", json={"name": "店主", "level_id": level_id})
    ).json()["id"]
    slug = f"shop-{secrets.token_hex(3)}"
    store = await operator.post(
        f"/v1/agents/{store_agent}/store",
        json={"slug": slug, "title": "店", "prices": {sku: RETAIL}},
    )
    assert store.status_code == 201, store.text
    return Network(sku, level_id, store_agent, slug)


async def _promoter(
    operator: httpx.AsyncClient, network: Network, **terms: object
) -> tuple[int, str]:
    agent = await operator.post("/v1/agents", json={"name": "推广员", "level_id": network.level_id})
    agent_id = agent.json()["id"]
    created = await operator.post("/v1/promoters", json={"agent_id": agent_id, **terms})
    assert created.status_code == 201, created.text
    assert created.json()["agent_id"] == agent_id
    return agent_id, created.json()["code"]


async def _order(
    buyer: httpx.AsyncClient,
    sku: str,
    quantity: int,
    *,
    store: str | None = None,
    promoter: str | None = None,
) -> httpx.Response:
    body: dict[str, object] = {
        "sku": sku,
        "quantity": quantity,
        "contact": _email(),
        "payment_method": "sandbox",
    }
    if store is not None:
        body["store"] = store
    if promoter is not None:
        body["promoter"] = promoter
    return await buyer.post("/v1/orders", json=body)


async def _balance(operator: httpx.AsyncClient, agent_id: int) -> int:
    balance: int = (await operator.get(f"/v1/agents/{agent_id}")).json()["balance"]
    return balance


async def _balanced(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(await conn.fetchval("SELECT coalesce(sum(amount), 0) = 0 FROM journal_lines"))
    finally:
        await conn.close()


async def test_a_store_sale_through_a_link_pays_the_promoter_and_a_refund_reverses_it(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    network = await _network(operator)
    promoter, code = await _promoter(operator, network, rate_bp=1000)
    order = await _order(buyer, network.sku, 2, store=network.slug, promoter=code)
    assert order.status_code == 201, order.text
    assert order.json()["amount"] == 2 * RETAIL
    no = order.json()["order_no"]
    # Nothing is credited before the payment.
    assert await _balance(operator, promoter) == 0
    pending = (await operator.get(f"/v1/promoters/{promoter}")).json()["earnings"]
    assert pending == {"earned": 0, "pending": 400, "reversed": 0, "orders": 1}

    assert (await buyer.post(f"/v1/payments/sandbox/{no}/pay")).json()["result"] == "delivered"
    # 10% of 4000 to the promoter, out of the store's margin 2 x (2000 - 1000).
    assert await _balance(operator, promoter) == 400
    assert await _balance(operator, network.store_agent) == 2000 - 400
    assert await _balanced(database_url)
    listed = (await operator.get(f"/v1/promoters/{promoter}/orders")).json()
    assert [(o["order_no"], o["commission"], o["status"]) for o in listed["data"]] == [
        (no, 400, "delivered")
    ]
    assert listed["next_cursor"] is None

    refund = await operator.post(f"/v1/orders/{no}/refund", json={"reason": "test"})
    assert refund.status_code == 200, refund.text
    assert await _balance(operator, promoter) == 0
    assert await _balance(operator, network.store_agent) == 0
    assert await _balanced(database_url)
    totals = (await operator.get(f"/v1/promoters/{promoter}")).json()["earnings"]
    assert totals == {"earned": 0, "pending": 0, "reversed": 400, "orders": 1}


async def test_a_direct_sale_pays_a_fixed_amount_per_unit(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    network = await _network(operator)
    promoter, code = await _promoter(operator, network, per_unit=150, code=secrets.token_hex(4))
    order = await _order(buyer, network.sku, 3, promoter=code)
    assert order.status_code == 201, order.text
    assert order.json()["amount"] == 3 * PRICE
    await buyer.post(f"/v1/payments/sandbox/{order.json()['order_no']}/pay")
    assert await _balance(operator, promoter) == 450
    assert await _balanced(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT promoter_agent_id, store_agent_id FROM orders WHERE order_no = $1",
            order.json()["order_no"],
        )
        shares = await conn.fetch(
            "SELECT s.kind, s.agent_id, s.amount FROM order_shares s JOIN orders o "
            "ON o.id = s.order_id WHERE o.order_no = $1 ORDER BY s.position",
            order.json()["order_no"],
        )
    finally:
        await conn.close()
    assert row is not None and (row["promoter_agent_id"], row["store_agent_id"]) == (
        promoter,
        None,
    )
    assert [(s["kind"], s["agent_id"], s["amount"]) for s in shares] == [
        ("promoter", promoter, 450),
        ("revenue", None, 3 * PRICE - 450),
    ]


async def test_codes_that_do_not_apply_are_refused_and_hold_nothing(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    network = await _network(operator, keys=3)
    other = await _network(operator, keys=1)
    _, scoped = await _promoter(operator, network, rate_bp=500, store_agent_id=network.store_agent)
    _, greedy = await _promoter(operator, network, rate_bp=10_000)

    unknown = await _order(buyer, network.sku, 1, store=network.slug, promoter="NOPE-1234")
    assert unknown.status_code == 404 and unknown.json()["code"] == "promoter_not_found"
    direct = await _order(buyer, network.sku, 1, promoter=scoped)
    assert direct.status_code == 422 and direct.json()["code"] == "promoter_not_for_store"
    elsewhere = await _order(buyer, other.sku, 1, store=other.slug, promoter=scoped)
    assert elsewhere.status_code == 422 and elsewhere.json()["code"] == "promoter_not_for_store"
    # 100% of the sale is more than the store's margin: refused, never silently capped.
    greedy_order = await _order(buyer, network.sku, 1, store=network.slug, promoter=greedy)
    assert greedy_order.status_code == 422
    assert greedy_order.json()["code"] == "promoter_exceeds_margin"
    malformed = await _order(buyer, network.sku, 1, promoter="a b")
    assert malformed.status_code == 422 and malformed.json()["code"] == "invalid_request"
    assert await app.state.runtime.pool.stock(network.sku) == (3, 0, 0)
    # The store's own promoter counts on the store's orders.
    fine = await _order(buyer, network.sku, 1, store=network.slug, promoter=scoped)
    assert fine.status_code == 201, fine.text


async def test_a_promoter_sees_its_own_code_earnings_and_orders(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    network = await _network(operator)
    promoter, code = await _promoter(operator, network, rate_bp=250)
    numbers = []
    for quantity in (1, 2, 1):
        order = await _order(buyer, network.sku, quantity, store=network.slug, promoter=code)
        assert order.status_code == 201, order.text
        numbers.append(order.json()["order_no"])
    await buyer.post(f"/v1/payments/sandbox/{numbers[1]}/pay")
    key = (await operator.post(f"/v1/agents/{promoter}/api-keys")).json()["key"]
    me = {"Authorization": f"Bearer {key}"}

    mine = await buyer.get("/v1/me/promotions", headers=me)
    assert mine.status_code == 200, mine.text
    assert mine.json()["code"] == code and mine.json()["rate_bp"] == 250
    # 2.5% of 4000 earned; 2.5% of 2000, twice, still pending.
    assert mine.json()["earnings"] == {"earned": 100, "pending": 100, "reversed": 0, "orders": 3}

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await buyer.get("/v1/me/promotions/orders", params=params, headers=me)).json()
        seen.extend(o["order_no"] for o in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == numbers[::-1]
    bad = await buyer.get("/v1/me/promotions/orders", params={"cursor": "!!"}, headers=me)
    assert bad.status_code == 422

    # An agent that is no promoter, and an operator token, get nothing here.
    plain_key = (await operator.post(f"/v1/agents/{network.store_agent}/api-keys")).json()["key"]
    plain = await buyer.get("/v1/me/promotions", headers={"Authorization": f"Bearer {plain_key}"})
    assert plain.status_code == 404 and plain.json()["code"] == "promoter_not_found"
    assert (await operator.get("/v1/me/promotions")).status_code == 403


async def test_creating_promoters_checks_its_input(
    app: FastAPI, operator: httpx.AsyncClient, database_url: str
) -> None:
    network = await _network(operator, keys=1)
    agent = (
        await operator.post("/v1/agents", json={"name": "p", "level_id": network.level_id})
    ).json()["id"]
    cases = [
        ({"agent_id": agent, "rate_bp": 100, "per_unit": 5}, 422, "invalid_promoter"),
        ({"agent_id": agent}, 422, "invalid_promoter"),
        ({"agent_id": agent, "rate_bp": 10_001}, 422, "invalid_request"),
        ({"agent_id": agent, "per_unit": -1}, 422, "invalid_request"),
        ({"agent_id": agent, "rate_bp": 1, "code": "x"}, 422, "invalid_request"),
        ({"agent_id": 999_999_999, "rate_bp": 1}, 404, "agent_not_found"),
        ({"agent_id": agent, "rate_bp": 1, "store_agent_id": 999_999_999}, 404, "agent_not_found"),
    ]
    for body, status, code in cases:
        response = await operator.post("/v1/promoters", json=body)
        assert (response.status_code, response.json()["code"]) == (status, code), body
    taken = secrets.token_hex(5)
    first = await operator.post(
        "/v1/promoters", json={"agent_id": agent, "rate_bp": 100, "code": taken}
    )
    assert first.status_code == 201
    again = await operator.post("/v1/promoters", json={"agent_id": agent, "rate_bp": 100})
    assert again.status_code == 409 and again.json()["code"] == "promoter_exists"
    other = (
        await operator.post("/v1/agents", json={"name": "q", "level_id": network.level_id})
    ).json()["id"]
    clash = await operator.post(
        "/v1/promoters", json={"agent_id": other, "rate_bp": 100, "code": taken}
    )
    assert clash.status_code == 409 and clash.json()["code"] == "promoter_code_taken"
    conn = await asyncpg.connect(database_url)
    try:
        audits = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'promoter.created' AND subject = $1",
            f"agent:{agent}",
        )
    finally:
        await conn.close()
    assert audits == 1


async def test_money_is_conserved_for_every_commission_rule(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    """A grid of rules and quantities, each sold, paid and refunded: the promoter gets
    exactly its commission (floored to the fen for rates), the store the rest of its
    margin, and a refund takes back exactly what was credited."""
    network = await _network(operator, keys=40)
    rules: list[dict[str, int]] = [{"rate_bp": r} for r in (0, 1, 333, 2500, 5000)]
    rules += [{"per_unit": p} for p in (0, 1, 499, 1000)]
    margin_per_unit = RETAIL - COST
    for rule in rules:
        promoter, code = await _promoter(operator, network, **rule)
        for quantity in (1, 3):
            store_before = await _balance(operator, network.store_agent)
            promoter_before = await _balance(operator, promoter)
            order = await _order(buyer, network.sku, quantity, store=network.slug, promoter=code)
            assert order.status_code == 201, (rule, quantity, order.text)
            amount = RETAIL * quantity
            expected = (
                amount * rule["rate_bp"] // 10_000
                if "rate_bp" in rule
                else rule["per_unit"] * quantity
            )
            no = order.json()["order_no"]
            await buyer.post(f"/v1/payments/sandbox/{no}/pay")
            assert await _balance(operator, promoter) - promoter_before == expected, rule
            store_gain = await _balance(operator, network.store_agent) - store_before
            assert store_gain == margin_per_unit * quantity - expected, rule
            assert await _balanced(database_url)
            await operator.post(f"/v1/orders/{no}/refund", json={"reason": "grid"})
            assert await _balance(operator, promoter) == promoter_before
            assert await _balance(operator, network.store_agent) == store_before
            assert await _balanced(database_url)


async def test_a_suspended_promoter_is_refused_and_new_terms_apply_to_new_orders(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    network = await _network(operator)
    promoter, code = await _promoter(operator, network, rate_bp=1000)
    before = await _order(buyer, network.sku, 1, store=network.slug, promoter=code)
    assert before.status_code == 201
    changed = await operator.patch(f"/v1/promoters/{promoter}", json={"per_unit": 10})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["rate_bp"], changed.json()["per_unit"]) == (None, 10)
    after = await _order(buyer, network.sku, 1, store=network.slug, promoter=code)
    # The order placed before keeps the commission it was placed with.
    listed = (await operator.get(f"/v1/promoters/{promoter}/orders")).json()["data"]
    assert [o["commission"] for o in listed] == [10, 200]
    assert after.json()["order_no"] == listed[0]["order_no"]

    suspended = await operator.patch(f"/v1/promoters/{promoter}", json={"status": "inactive"})
    assert suspended.status_code == 200 and suspended.json()["status"] == "inactive"
    refused = await _order(buyer, network.sku, 1, store=network.slug, promoter=code)
    assert refused.status_code == 404 and refused.json()["code"] == "promoter_not_found"
    both = await operator.patch(f"/v1/promoters/{promoter}", json={"rate_bp": 1, "per_unit": 1})
    assert both.status_code == 422 and both.json()["code"] == "invalid_promoter"
    missing = await operator.patch("/v1/promoters/999999999", json={"status": "active"})
    assert missing.status_code == 404 and missing.json()["code"] == "promoter_not_found"
