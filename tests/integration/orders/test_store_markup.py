"""Sub-store identity and markup rules through the real app: contact on the public page,
cost + markup where no absolute price is set, charged end to end through a sandbox payment,
and the agent managing its own store with its live key (audited, idempotent).
"""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import httpx
import orjson
from fastapi import FastAPI

from tests.integration.api.conftest import unique_sku

LIST_PRICE = 1990
PARENT_COST, AGENT_COST = 1000, 1500


async def _product(operator: httpx.AsyncClient, keys: int = 5) -> str:
    sku = unique_sku("MK")
    created = await operator.post(
        "/v1/products", json={"sku": sku, "name": "月卡", "type": "card", "price": LIST_PRICE}
    )
    assert created.status_code == 201, created.text
    codes = [f"{sku}-{secrets.token_hex(6)}" for _ in range(keys)]
    assert (
        await operator.post(f"/v1/products/{sku}/batches", json={"codes": codes})
    ).status_code == 201
    return sku


async def _tree(operator: httpx.AsyncClient, skus: list[str]) -> tuple[int, int, int]:
    """A parent at PARENT_COST and its agent at AGENT_COST for every SKU of the first
    level's range; returns (parent, agent, agent's level)."""
    top = await operator.post(
        "/v1/agent-levels",
        json={"name": "省代", "rank": 2, "prices": dict.fromkeys(skus, PARENT_COST)},
    )
    parent = await operator.post("/v1/agents", json={"name": "P", "level_id": top.json()["id"]})
    level = await operator.post(
        "/v1/agent-levels",
        json={"name": "市代", "rank": 1, "prices": dict.fromkeys(skus, AGENT_COST),
              "visible_skus": skus},
    )  # fmt: skip
    child = await operator.post(
        "/v1/agents",
        json={"name": "A", "level_id": level.json()["id"], "parent_id": parent.json()["id"]},
    )
    assert child.status_code == 201, child.text
    return parent.json()["id"], child.json()["id"], level.json()["id"]


def _email() -> dict[str, str]:
    return {"email": f"buyer-{secrets.token_hex(4)}@example.com"}


async def _buy(buyer: httpx.AsyncClient, sku: str, slug: str, quantity: int) -> httpx.Response:
    return await buyer.post(
        "/v1/orders",
        json={"sku": sku, "quantity": quantity, "contact": _email(),
              "payment_method": "sandbox", "store": slug},
    )  # fmt: skip


async def _balance(operator: httpx.AsyncClient, agent_id: int) -> int:
    balance: int = (await operator.get(f"/v1/agents/{agent_id}")).json()["balance"]
    return balance


async def _trial_balanced(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(await conn.fetchval("SELECT coalesce(sum(amount), 0) = 0 FROM journal_lines"))
    finally:
        await conn.close()


async def test_a_store_sells_at_cost_plus_markup_and_the_agent_earns_the_margin(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    marked, fixed = await _product(operator), await _product(operator)
    parent, agent, _ = await _tree(operator, [marked, fixed])
    slug = f"mk-{secrets.token_hex(3)}"
    contact = {"email": "shop@example.com", "qq": "123456", "wechat": "wang_shop"}
    store = await operator.post(
        f"/v1/agents/{agent}/store",
        json={"slug": slug, "title": "小王的店", "contact": contact,
              "markup": {"rate_bp": 2000}, "prices": {fixed: 2500}},
    )  # fmt: skip
    assert store.status_code == 201, store.text
    assert store.json()["markup"] == {"rate_bp": 2000, "per_unit": None}
    assert store.json()["prices"] == {fixed: 2500}

    page = await buyer.get(f"/v1/stores/{slug}")
    assert page.status_code == 200
    # +20% over the agent's own cost where the store set no price; its price elsewhere.
    assert {i["sku"]: i["price"] for i in page.json()["items"]} == {marked: 1800, fixed: 2500}
    assert page.json()["contact"] == contact
    # What would reveal the agent's cost stays off the public page.
    assert "markup" not in page.json() and "prices" not in page.json()

    order = await _buy(buyer, marked, slug, 2)
    assert order.status_code == 201, order.text
    assert order.json()["amount"] == 2 * 1800
    paid = await buyer.post(f"/v1/payments/sandbox/{order.json()['order_no']}/pay")
    assert paid.json()["result"] == "delivered"
    # 秒结: the agent its margin, the parent its differential, the platform the rest.
    assert await _balance(operator, agent) == 2 * (1800 - AGENT_COST)
    assert await _balance(operator, parent) == 2 * (AGENT_COST - PARENT_COST)
    assert await _trial_balanced(database_url)

    # The absolute price overrides the markup.
    order = await _buy(buyer, fixed, slug, 1)
    assert order.json()["amount"] == 2500
    await buyer.post(f"/v1/payments/sandbox/{order.json()['order_no']}/pay")
    assert await _balance(operator, agent) == 2 * 300 + (2500 - AGENT_COST)

    # A fixed markup per unit.
    changed = await operator.post(
        f"/v1/agents/{agent}/store",
        json={"slug": slug, "title": "小王的店", "markup": {"per_unit": 250}},
    )
    assert changed.status_code == 201, changed.text
    page = (await buyer.get(f"/v1/stores/{slug}")).json()
    assert {i["sku"]: i["price"] for i in page["items"]} == {marked: 1750, fixed: 1750}
    order = await _buy(buyer, marked, slug, 1)
    assert order.json()["amount"] == 1750
    # Without a markup a store sells at the list price, as before.
    await operator.post(f"/v1/agents/{agent}/store", json={"slug": slug, "title": "T"})
    order = await _buy(buyer, marked, slug, 1)
    assert order.json()["amount"] == LIST_PRICE
    assert await _trial_balanced(database_url)


async def test_the_markup_follows_the_agents_cost_for_the_quantity(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    sku = await _product(operator, keys=12)
    level = await operator.post(
        "/v1/agent-levels", json={"name": "tiered", "rank": 1, "prices": {sku: 1500}}
    )
    tiered = await operator.patch(
        f"/v1/agent-levels/{level.json()['id']}",
        json={"tiers": {sku: [{"min_quantity": 10, "unit_price": 1300}]}},
    )
    assert tiered.status_code == 200, tiered.text
    agent = (
        await operator.post("/v1/agents", json={"name": "T", "level_id": level.json()["id"]})
    ).json()["id"]
    slug = f"tq-{secrets.token_hex(3)}"
    await operator.post(
        f"/v1/agents/{agent}/store",
        json={"slug": slug, "title": "T", "markup": {"rate_bp": 1000}},
    )
    assert (await _buy(buyer, sku, slug, 1)).json()["amount"] == 1650
    # Ten units cost the agent 1300 each: the buyer pays that plus 10%.
    assert (await _buy(buyer, sku, slug, 10)).json()["amount"] == 10 * 1430


async def test_bad_store_settings_are_422_and_change_nothing(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    sku = await _product(operator)
    _, agent, _ = await _tree(operator, [sku])
    slug = f"bad-{secrets.token_hex(3)}"
    good = {"slug": slug, "title": "T", "contact": {"phone": "+86 138 0000 0000"}}
    assert (await operator.post(f"/v1/agents/{agent}/store", json=good)).status_code == 201
    for bad in (
        {"contact": {"wechat": "abc\x07"}},
        {"contact": {"email": "not-an-email"}},
        {"contact": {"phone": "call me"}},
        {"contact": {"Bad Name": "x"}},
        {"contact": {"note": ""}},
        {"contact": {f"f{i}": "x" for i in range(9)}},
        {"contact": {"qq": 123}},
        {"markup": {"rate_bp": 100, "per_unit": 5}},
        {"markup": {}},
        {"markup": {"rate_bp": -1}},
        {"markup": {"per_unit": 1.5}},
        {"title": "line\nbreak"},
    ):
        response = await operator.post(f"/v1/agents/{agent}/store", json={**good, **bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["code"] == "invalid_request"
    page = (await buyer.get(f"/v1/stores/{slug}")).json()
    assert page["contact"] == {"phone": "+86 138 0000 0000"} and page["title"] == "T"
    # An absolute price below the agent's cost is refused, as before.
    cheap = await operator.post(
        f"/v1/agents/{agent}/store", json={**good, "prices": {sku: AGENT_COST - 1}}
    )
    assert cheap.status_code == 409 and cheap.json()["code"] == "price_below_cost"


async def test_an_agent_manages_its_own_store_with_its_live_key(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient, database_url: str
) -> None:
    sku, hidden = await _product(operator), await _product(operator)
    parent, agent, _ = await _tree(operator, [sku])
    live = (await operator.post(f"/v1/agents/{agent}/api-keys")).json()["key"]
    test = (await operator.post(f"/v1/agents/{agent}/api-keys", json={"mode": "test"})).json()[
        "key"
    ]
    mine = {"Authorization": f"Bearer {live}"}
    sandbox = {"Authorization": f"Bearer {test}"}
    missing = await buyer.get("/v1/me/store", headers=mine)
    assert missing.status_code == 404 and missing.json()["code"] == "store_not_found"

    slug = f"me-{secrets.token_hex(3)}"
    body = {"slug": slug, "title": "我的店", "contact": {"wechat": "me_shop"},
            "markup": {"rate_bp": 1000}}  # fmt: skip
    for method in ("GET", "PUT"):
        refused = await buyer.request(
            method, "/v1/me/store", headers=sandbox, json=body if method == "PUT" else None
        )
        assert refused.status_code == 403 and refused.json()["code"] == "live_key_required"
    assert (await buyer.put("/v1/me/store", json=body)).status_code == 401
    assert (await operator.put("/v1/me/store", json=body)).status_code == 403

    put = await buyer.put("/v1/me/store", json=body, headers={**mine, "Idempotency-Key": "s1"})
    assert put.status_code == 200, put.text
    assert put.json()["markup"] == {"rate_bp": 1000, "per_unit": None}
    assert [(i["sku"], i["price"]) for i in put.json()["items"]] == [(sku, 1650)]
    replay = await buyer.put("/v1/me/store", json=body, headers={**mine, "Idempotency-Key": "s1"})
    assert replay.json() == put.json() and replay.headers.get("Idempotent-Replayed") == "true"
    conflict = await buyer.put(
        "/v1/me/store", json={**body, "title": "x"}, headers={**mine, "Idempotency-Key": "s1"}
    )
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_conflict"

    # Its own rules: at or above its cost, only SKUs its level sees, a slug nobody has.
    below = await buyer.put(
        "/v1/me/store", json={**body, "prices": {sku: AGENT_COST - 1}}, headers=mine
    )
    assert below.status_code == 409 and below.json()["code"] == "price_below_cost"
    unseen = await buyer.put("/v1/me/store", json={**body, "prices": {hidden: 5000}}, headers=mine)
    assert unseen.status_code == 422 and unseen.json()["code"] == "unknown_sku"
    other = f"other-{secrets.token_hex(3)}"
    await operator.post(f"/v1/agents/{parent}/store", json={"slug": other, "title": "P"})
    taken = await buyer.put("/v1/me/store", json={**body, "slug": other}, headers=mine)
    assert taken.status_code == 409 and taken.json()["code"] == "store_slug_taken"

    changed = await buyer.put(
        "/v1/me/store",
        json={**body, "title": "新店名", "markup": {"per_unit": 100}, "prices": {sku: 2200}},
        headers=mine,
    )
    assert changed.status_code == 200, changed.text
    read = (await buyer.get("/v1/me/store", headers=mine)).json()
    assert (read["title"], read["prices"], read["markup"]) == (
        "新店名",
        {sku: 2200},
        {"rate_bp": None, "per_unit": 100},
    )
    assert (await operator.get(f"/v1/agents/{agent}/store")).json() == read
    order = await _buy(buyer, sku, slug, 1)
    assert order.json()["amount"] == 2200

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT actor, detail FROM audit_log WHERE action = 'store.set' AND subject = $1 "
            "ORDER BY id",
            f"agent:{agent}",
        )
    finally:
        await conn.close()
    # The first write and the change; refused writes left nothing.
    assert [r["actor"] for r in rows] == [f"agent:{agent}", f"agent:{agent}"]
    first, last = (orjson.loads(r["detail"])["changes"] for r in rows)
    assert first["slug"] == {"from": None, "to": slug}
    assert first["markup"] == {"from": None, "to": {"rate_bp": 1000}}
    assert last == {
        "title": {"from": "我的店", "to": "新店名"},
        "markup": {"from": {"rate_bp": 1000}, "to": {"per_unit": 100}},
        "prices": {sku: {"from": None, "to": 2200}},
    }


async def test_two_agents_claiming_one_slug_at_once_get_one_store(
    app: FastAPI, buyer: httpx.AsyncClient, operator: httpx.AsyncClient
) -> None:
    sku = await _product(operator)
    agents = [(await _tree(operator, [sku]))[1] for _ in range(4)]
    slug = f"race-{secrets.token_hex(3)}"
    answers = await asyncio.gather(
        *(
            operator.post(f"/v1/agents/{a}/store", json={"slug": slug, "title": str(a)})
            for a in agents
        )
    )
    assert sorted(r.status_code for r in answers) == [201, 409, 409, 409]
    assert {r.json()["code"] for r in answers if r.status_code == 409} == {"store_slug_taken"}
    winner = next(r.json()["agent_id"] for r in answers if r.status_code == 201)
    assert (await buyer.get(f"/v1/stores/{slug}")).json()["agent_id"] == winner
