"""Agent levels in depth through the API: PATCH and list, tiers charged by POST
/v1/issuances on real stock, cost-basis floors (configured and at sale time), the tree's
depth limit, sub-agents and their prices, the order path's costs, upgrade rules with an
injected time, manual level changes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from engine.distribution.levels import CachedPricing, agent_unit_cost
from engine.distribution.upgrades import run_upgrades
from engine.issuance.terms import TermsCache
from engine.settings import Settings
from tests.integration.api.conftest import unique_sku


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(
        settings.model_copy(
            update={"sandbox": True, "order_max_unpaid_per_ip": 1000, "agent_max_depth": 3}
        )
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(f"10.9.{secrets.randbelow(250)}.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
        yield c


@dataclass
class Api:
    client: httpx.AsyncClient
    token: str

    @property
    def op(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def post(self, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return await self.client.post(path, json=body, headers={**self.op, **headers})

    async def patch(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return await self.client.patch(path, json=body, headers={**self.op, **headers})

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(path, headers=self.op)

    async def product(self, *, price: int = 1990, codes: int = 0, unit_cost: int = 0) -> str:
        sku = unique_sku("LV")
        made = await self.post(
            "/v1/products", {"sku": sku, "name": "月卡", "type": "card", "price": price}
        )
        assert made.status_code == 201, made.text
        if codes:
            await self.batch(sku, codes, unit_cost)
        return sku

    async def batch(self, sku: str, count: int, unit_cost: int) -> None:
        codes = [f"{sku}-{secrets.token_hex(6)}" for _ in range(count)]
        loaded = await self.post(
            f"/v1/products/{sku}/batches", {"codes": codes, "unit_cost": unit_cost}
        )
        assert loaded.status_code == 201, loaded.text

    async def level(self, rank: int, prices: dict[str, int], **changes: Any) -> dict[str, Any]:
        made = await self.post(
            "/v1/agent-levels", {"name": f"L{rank}", "rank": rank, "prices": prices}
        )
        assert made.status_code == 201, made.text
        level: dict[str, Any] = made.json()
        if changes:
            patched = await self.patch(f"/v1/agent-levels/{level['id']}", changes)
            assert patched.status_code == 200, patched.text
            level = patched.json()
        return level

    async def agent(
        self, level_id: int, *, parent_id: int | None = None, deposit: int = 0
    ) -> tuple[int, dict[str, str]]:
        made = await self.post(
            "/v1/agents", {"name": "a", "level_id": level_id, "parent_id": parent_id}
        )
        assert made.status_code == 201, made.text
        agent_id: int = made.json()["id"]
        if deposit:
            await self.post(f"/v1/agents/{agent_id}/deposits", {"amount": deposit})
        key = (await self.post(f"/v1/agents/{agent_id}/api-keys")).json()["key"]
        return agent_id, {"Authorization": f"Bearer {key}"}

    async def balance(self, agent_id: int) -> int:
        balance: int = (await self.get(f"/v1/agents/{agent_id}")).json()["balance"]
        return balance

    async def issue(self, auth: dict[str, str], sku: str, quantity: int) -> httpx.Response:
        return await self.client.post(
            "/v1/issuances",
            json={"sku": sku, "quantity": quantity},
            headers={**auth, "Idempotency-Key": secrets.token_hex(8)},
        )


@pytest.fixture
def api(client: httpx.AsyncClient, operator_token: str) -> Api:
    return Api(client, operator_token)


async def _balanced(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(await conn.fetchval("SELECT coalesce(sum(amount), 0) = 0 FROM journal_lines"))
    finally:
        await conn.close()


# --- PATCH and list ----------------------------------------------------------------------


async def test_a_level_is_patched_listed_and_audited(api: Api, database_url: str) -> None:
    sku, other = await api.product(), await api.product()
    level = await api.level(2, {sku: 1500})
    assert level["tiers"] == {} and level["discount_bp"] is None
    target = await api.level(3, {})
    body = {
        "name": "金牌代理",
        "discount_bp": 1500,
        "tiers": {sku: [{"min_quantity": 10, "unit_price": 1400}]},
        "visible_skus": [sku, other],
        "can_create_sub_agents": True,
        "upgrade_rules": [
            {"metric": "sales", "threshold": 100000, "window_days": 30,
             "to_level_id": target["id"]}
        ],
    }  # fmt: skip
    headers = {"Idempotency-Key": f"patch-{level['id']}"}
    patched = await api.patch(f"/v1/agent-levels/{level['id']}", body, **headers)
    assert patched.status_code == 200, patched.text
    found = patched.json()
    assert found["name"] == "金牌代理" and found["rank"] == 2
    assert found["prices"] == {sku: 1500}  # not sent: unchanged
    assert found["discount_bp"] == 1500
    assert found["tiers"] == {sku: [{"min_quantity": 10, "unit_price": 1400}]}
    assert found["visible_skus"] == [sku, other]
    assert found["can_create_sub_agents"] is True and found["auto_downgrade"] is False
    [rule] = found["upgrade_rules"]
    assert (rule["metric"], rule["threshold"], rule["to_level_id"]) == (
        "sales",
        100000,
        target["id"],
    )
    assert (await api.get(f"/v1/agent-levels/{level['id']}")).json() == found

    replay = await api.patch(f"/v1/agent-levels/{level['id']}", body, **headers)
    assert replay.content == patched.content and replay.headers["idempotent-replayed"] == "true"
    conflict = await api.patch(f"/v1/agent-levels/{level['id']}", {"name": "x"}, **headers)
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_conflict"

    # null removes the discount and shows every SKU; prices replace the whole map.
    cleared = await api.patch(
        f"/v1/agent-levels/{level['id']}",
        {"discount_bp": None, "visible_skus": None, "prices": {other: 1700}},
    )
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["discount_bp"] is None and cleared.json()["visible_skus"] is None
    assert cleared.json()["prices"] == {other: 1700}

    conn = await asyncpg.connect(database_url)
    try:
        audits = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'agent_level.updated' AND subject = $1",
            f"agent_level:{level['id']}",
        )
    finally:
        await conn.close()
    assert audits == 2

    listed: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = (
            await api.get("/v1/agent-levels?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        ).json()
        assert len(page["data"]) <= 2
        listed.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [lv["id"] for lv in listed]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert next(lv for lv in listed if lv["id"] == level["id"]) == cleared.json()


def _fill(value: Any, names: dict[str, Any]) -> Any:
    """`value` with the placeholders of the parameters below replaced (keys and values)."""
    if isinstance(value, dict):
        return {names.get(k, k): _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return names.get(value, value) if isinstance(value, str) else value


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"tiers": {"SKU": [{"min_quantity": 100, "unit_price": 1200},
                            {"min_quantity": 10, "unit_price": 1400}]}}, "tiers_out_of_order"),
        ({"tiers": {"SKU": [{"min_quantity": 10, "unit_price": 1500}]}}, "tiers_out_of_order"),
        ({"tiers": {"SKU": [{"min_quantity": 10, "unit_price": 1400},
                            {"min_quantity": 20, "unit_price": 1450}]}}, "tiers_out_of_order"),
        ({"tiers": {"SKU": [{"min_quantity": 1, "unit_price": 1400}]}}, "invalid_request"),
        ({"prices": {"SKU": 1000}}, "tiers_out_of_order"),  # below the existing tier
        ({"prices": {"NO-SUCH": 1}}, "unknown_sku"),
        ({"discount_bp": 10001}, "invalid_request"),
        ({"rank": None}, "invalid_request"),
        ({"name": None}, "invalid_request"),
        ({"colour": "red"}, "invalid_request"),
        ({"upgrade_rules": [{"metric": "sales", "threshold": 1, "window_days": 1,
                             "to_level_id": 999999999}]}, "level_not_found"),
        ({"upgrade_rules": [{"metric": "sales", "threshold": 1, "window_days": 1,
                             "to_level_id": "SELF"}]}, "invalid_upgrade_rule"),
        ({"upgrade_rules": [{"metric": "sales", "threshold": 1, "window_days": 1,
                             "to_level_id": "LOWER"}]}, "auto_downgrade_disabled"),
    ],
)  # fmt: skip
async def test_a_bad_patch_changes_nothing(api: Api, body: dict[str, Any], code: str) -> None:
    sku = await api.product()
    lower = await api.level(1, {})
    level = await api.level(5, {sku: 1500}, tiers={sku: [{"min_quantity": 5, "unit_price": 1100}]})
    names = {"SKU": sku, "SELF": level["id"], "LOWER": lower["id"]}
    refused = await api.patch(f"/v1/agent-levels/{level['id']}", _fill(body, names))
    assert refused.json()["code"] == code, refused.text
    assert refused.status_code in {404, 409, 422}
    assert (await api.get(f"/v1/agent-levels/{level['id']}")).json() == level
    missing = await api.patch("/v1/agent-levels/999999999", {"name": "x"})
    assert missing.status_code == 404 and missing.json()["code"] == "level_not_found"


# --- tiers on the hot path, floors --------------------------------------------------------


async def test_issuances_pay_the_tier_price_of_their_quantity(
    app: FastAPI, api: Api, database_url: str
) -> None:
    sku = await api.product(codes=30, unit_cost=800)
    level = await api.level(
        1,
        {sku: 1500},
        tiers={sku: [{"min_quantity": 5, "unit_price": 1400}, {"min_quantity": 10,
                                                              "unit_price": 1250}]},
    )  # fmt: skip
    agent_id, auth = await api.agent(level["id"], deposit=100_000)

    one = await api.issue(auth, sku, 1)
    assert one.status_code == 201, one.text
    assert one.json()["amount"] == 1500
    five = await api.issue(auth, sku, 5)
    assert five.json()["amount"] == 5 * 1400
    ten = await api.issue(auth, sku, 12)
    assert ten.json()["amount"] == 12 * 1250
    assert await api.balance(agent_id) == 100_000 - 1500 - 7000 - 15000

    conn = await asyncpg.connect(database_url)
    try:
        assert await agent_unit_cost(conn, agent_id, sku, 12) == 1250
        assert await agent_unit_cost(conn, agent_id, sku, 4) == 1500
    finally:
        await conn.close()
    cached = CachedPricing(app.state.issuance.terms, app.state.runtime.db, level["id"])
    assert await agent_unit_cost(cached, agent_id, sku, 10) == 1250
    prices = (await api.client.get(f"/v1/me/prices?sku={sku}", headers=auth)).json()["data"]
    [mine] = [p for p in prices if p["sku"] == sku]
    assert mine == {
        "sku": sku,
        "name": "月卡",
        "currency": "CNY",
        "retail_price": 1990,
        "unit_price": 1500,
        "source": "level_price",
        "tiers": [{"min_quantity": 5, "unit_price": 1400}, {"min_quantity": 10,
                                                             "unit_price": 1250}],
        "on_sale": True,
    }  # fmt: skip

    first = await api.client.get("/v1/me/prices?limit=1", headers=auth)
    assert len(first.json()["data"]) == 1 and first.json()["next_cursor"] is not None
    bad = await api.client.get("/v1/me/prices?cursor=nonsense", headers=auth)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"

    # A price change applies to the next issuance of this worker at once.
    patched = await api.patch(f"/v1/agent-levels/{level['id']}", {"tiers": {}})
    assert patched.status_code == 200
    again = await api.issue(auth, sku, 12)
    assert again.json()["amount"] == 12 * 1500
    assert await _balanced(database_url)


async def test_prices_below_the_cost_basis_are_refused_when_configured(api: Api) -> None:
    sku = await api.product(codes=1, unit_cost=1000)
    # The dearest batch is the basis, whichever came first.
    await api.batch(sku, 1, 600)
    refused = await api.post("/v1/agent-levels", {"name": "x", "rank": 1, "prices": {sku: 999}})
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "price_below_cost_basis"
    assert refused.json()["skus"] == [sku]

    level = await api.level(1, {sku: 1500})
    path = f"/v1/agent-levels/{level['id']}"
    for body in (
        {"prices": {sku: 900}},
        {"tiers": {sku: [{"min_quantity": 10, "unit_price": 950}]}},
        # No absolute price: 50% off ¥19.90 is ¥9.95, below the ¥10.00 basis.
        {"prices": {}, "discount_bp": 5000},
    ):
        answer = await api.patch(path, body)
        assert answer.status_code == 409, (body, answer.text)
        assert answer.json()["code"] == "price_below_cost_basis"
    assert (await api.get(path)).json() == level
    fine = await api.patch(path, {"tiers": {sku: [{"min_quantity": 10, "unit_price": 1000}]}})
    assert fine.status_code == 200, fine.text


async def test_a_dearer_batch_stops_sales_below_the_new_basis(
    app: FastAPI, api: Api, database_url: str
) -> None:
    sku = await api.product(codes=5, unit_cost=800)
    level = await api.level(1, {sku: 1000})
    agent_id, auth = await api.agent(level["id"], deposit=50_000)
    headers = {**auth, "Idempotency-Key": f"first-{agent_id}"}
    first = await api.client.post(
        "/v1/issuances", json={"sku": sku, "quantity": 1}, headers=headers
    )
    assert first.status_code == 201
    stock = (await api.get(f"/v1/products/{sku}")).json()["stock"]

    await api.batch(sku, 5, 1200)
    # Workers see the new basis within the terms TTL (2 s); this one at once.
    app.state.issuance.terms.clear()
    refused = await api.issue(auth, sku, 1)
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "price_below_cost_basis"
    # A retry of the sale made before still gets its answer.
    retry = await api.client.post(
        "/v1/issuances", json={"sku": sku, "quantity": 1}, headers=headers
    )
    assert retry.status_code == 201 and retry.content == first.content
    assert await api.balance(agent_id) == 50_000 - 1000
    after = (await api.get(f"/v1/products/{sku}")).json()["stock"]
    assert after["issued"] == stock["issued"] and after["held"] == 0
    prices = (await api.client.get(f"/v1/me/prices?sku={sku}", headers=auth)).json()["data"]
    assert [p["on_sale"] for p in prices if p["sku"] == sku] == [False]
    assert await _balanced(database_url)


# --- the tree ------------------------------------------------------------------------------


async def test_the_tree_is_at_most_max_depth_deep(api: Api) -> None:
    level = await api.level(1, {})
    parent = None
    for _ in range(3):
        parent, _ = await api.agent(level["id"], parent_id=parent)
    refused = await api.post(
        "/v1/agents", {"name": "too deep", "level_id": level["id"], "parent_id": parent}
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "agent_tree_too_deep"


async def test_an_agent_creates_sub_agents_and_prices_them(api: Api, database_url: str) -> None:
    sku = await api.product(codes=10, unit_cost=500)
    top = await api.level(3, {sku: 1000}, can_create_sub_agents=True)
    low = await api.level(2, {sku: 1200})
    parent_id, parent = await api.agent(top["id"], deposit=10_000)
    me = api.client

    same_rank = await me.post(
        "/v1/me/sub-agents", json={"name": "c", "level_id": top["id"]}, headers=parent
    )
    assert same_rank.status_code == 422 and same_rank.json()["code"] == "level_not_below_parent"
    cheap = await me.post(
        "/v1/me/sub-agents",
        json={"name": "c", "level_id": low["id"], "prices": {sku: 999}},
        headers=parent,
    )
    assert cheap.status_code == 409 and cheap.json()["code"] == "price_below_cost"
    assert cheap.json()["costs"] == {sku: 1000}
    as_operator = await api.post("/v1/me/sub-agents", {"name": "c", "level_id": low["id"]})
    assert as_operator.status_code == 403

    headers = {**parent, "Idempotency-Key": f"sub-{parent_id}"}
    body = {"name": "小王", "level_id": low["id"], "prices": {sku: 1300}}
    created = await me.post("/v1/me/sub-agents", json=body, headers=headers)
    assert created.status_code == 201, created.text
    replay = await me.post("/v1/me/sub-agents", json=body, headers=headers)
    assert replay.content == created.content
    child = created.json()
    assert (child["parent_id"], child["level_id"], child["prices"]) == (
        parent_id,
        low["id"],
        {sku: 1300},
    )
    assert child["credit_limit"] == 0
    child_auth = {"Authorization": f"Bearer {child['api_key']['key']}"}
    listed = (await me.get("/v1/me/sub-agents", headers=parent)).json()["data"]
    assert [c["id"] for c in listed] == [child["id"]]

    # The child pays max(its level's 1200, its parent's 1300).
    await api.post(f"/v1/agents/{child['id']}/deposits", {"amount": 10_000})
    bought = await api.issue(child_auth, sku, 2)
    assert bought.status_code == 201, bought.text
    assert bought.json()["amount"] == 2600
    [mine] = [
        p
        for p in (await me.get(f"/v1/me/prices?sku={sku}", headers=child_auth)).json()["data"]
        if p["sku"] == sku
    ]
    assert (mine["unit_price"], mine["source"]) == (1300, "parent_price")

    # The child cannot make sub-agents (its level does not allow it), nor price others.
    denied = await me.post(
        "/v1/me/sub-agents", json={"name": "g", "level_id": low["id"]}, headers=child_auth
    )
    assert denied.status_code == 403 and denied.json()["code"] == "sub_agents_not_allowed"
    not_mine = await me.put(
        f"/v1/me/sub-agents/{parent_id}/prices", json={"prices": {sku: 5000}}, headers=child_auth
    )
    assert not_mine.status_code == 404 and not_mine.json()["code"] == "agent_not_found"

    # A lower price for the child applies to its next purchase.
    repriced = await me.put(
        f"/v1/me/sub-agents/{child['id']}/prices", json={"prices": {sku: 1100}}, headers=parent
    )
    assert repriced.status_code == 200, repriced.text
    assert (await api.issue(child_auth, sku, 1)).json()["amount"] == 1200
    too_low = await me.put(
        f"/v1/me/sub-agents/{child['id']}/prices", json={"prices": {sku: 900}}, headers=parent
    )
    assert too_low.status_code == 409 and too_low.json()["code"] == "price_below_cost"

    conn = await asyncpg.connect(database_url)
    try:
        actions = await conn.fetch(
            "SELECT action, actor FROM audit_log WHERE subject = $1 "
            "AND action LIKE 'sub_agent.%' ORDER BY id",
            f"agent:{child['id']}",
        )
    finally:
        await conn.close()
    assert [(a["action"], a["actor"]) for a in actions] == [
        ("sub_agent.created", f"agent:{parent_id}"),
        ("sub_agent.prices_set", f"agent:{parent_id}"),
    ]


async def test_sub_store_commissions_use_the_resolved_costs(api: Api, database_url: str) -> None:
    sku = await api.product(codes=20, unit_cost=500)
    top = await api.level(5, {sku: 1000}, can_create_sub_agents=True)
    mid = await api.level(3, {sku: 1200})
    low = await api.level(2, {sku: 1600}, tiers={sku: [{"min_quantity": 3, "unit_price": 1200}]})
    parent_id, parent = await api.agent(top["id"])
    created = await api.client.post(
        "/v1/me/sub-agents",
        json={"name": "c", "level_id": low["id"], "prices": {sku: 1300}},
        headers=parent,
    )
    child_id = created.json()["id"]
    slug = f"lv-{secrets.token_hex(4)}"
    store = await api.post(
        f"/v1/agents/{child_id}/store", {"slug": slug, "title": "店", "prices": {sku: 2000}}
    )
    assert store.status_code == 201, store.text

    # 3 units: the child's level tier (1200) is under its parent's price (1300), so it
    # pays 1300; the parent earns (1300 - 1000) x 3, the child (2000 - 1300) x 3.
    order = await api.client.post(
        "/v1/orders",
        json={"sku": sku, "quantity": 3, "contact": {"email": f"{slug}@example.com"},
              "payment_method": "sandbox", "store": slug},
    )  # fmt: skip
    assert order.status_code == 201, order.text
    paid = await api.client.post(f"/v1/payments/sandbox/{order.json()['order_no']}/pay")
    assert paid.status_code == 200, paid.text
    assert await api.balance(child_id) == 3 * 700
    assert await api.balance(parent_id) == 3 * 300
    assert await _balanced(database_url)

    # A dearer batch than the parent's price: the store's next sale is refused up front.
    await api.batch(sku, 1, 1100)
    refused = await api.client.post(
        "/v1/orders",
        json={"sku": sku, "quantity": 1, "contact": {"email": f"b{slug}@example.com"},
              "payment_method": "sandbox", "store": slug},
    )  # fmt: skip
    assert refused.status_code == 409 and refused.json()["code"] == "price_below_cost_basis"

    # The store's paid sales count for upgrades; a rule that would lift the child to its
    # parent's rank is passed over for one that keeps it below.
    rules = [
        {"metric": "sales", "threshold": 6000, "window_days": 1, "to_level_id": top["id"]},
        {"metric": "sales", "threshold": 6000, "window_days": 1, "to_level_id": mid["id"]},
    ]
    assert (
        await api.patch(f"/v1/agent-levels/{low['id']}", {"upgrade_rules": rules})
    ).status_code == 200
    conn = await asyncpg.connect(database_url)
    try:
        changes = await run_upgrades(conn, datetime.now(UTC) + timedelta(minutes=1))
    finally:
        await conn.close()
    [change] = [c for c in changes if c.agent_id == child_id]
    assert change.to_level_id == mid["id"]
    assert change.reason == "sales of 6000 over the last 1 day ≥ 6000"


# --- upgrades ----------------------------------------------------------------------------


async def test_upgrade_rules_apply_with_their_reason(
    app: FastAPI, api: Api, database_url: str
) -> None:
    sku = await api.product(codes=20)
    gold = await api.level(5, {sku: 1000})
    silver = await api.level(3, {sku: 1200})
    bronze = await api.level(
        1,
        {sku: 1500},
        upgrade_rules=[
            {"metric": "deposits", "threshold": 50_000, "window_days": 30,
             "to_level_id": silver["id"]},
            {"metric": "sales", "threshold": 15_000, "window_days": 7,
             "to_level_id": gold["id"]},
        ],
    )  # fmt: skip
    depositor, _ = await api.agent(bronze["id"], deposit=50_000)
    seller, seller_auth = await api.agent(bronze["id"], deposit=30_000)
    idle, _ = await api.agent(bronze["id"], deposit=49_999)
    assert (await api.issue(seller_auth, sku, 10)).json()["amount"] == 15_000

    now = datetime.now(UTC) + timedelta(minutes=1)
    conn = await asyncpg.connect(database_url)
    try:
        # Too late for the 7-day sales window and the 30-day deposits one: nothing moves.
        assert [c for c in await run_upgrades(conn, now + timedelta(days=31))
                if c.agent_id in {depositor, seller, idle}] == []  # fmt: skip
        changes = {
            c.agent_id: c for c in await run_upgrades(conn, now) if c.agent_id in {
                depositor, seller, idle}
        }  # fmt: skip
        levels = dict(
            await conn.fetch(
                "SELECT id, level_id FROM agents WHERE id = ANY($1::bigint[])",
                [depositor, seller, idle],
            )
        )
    finally:
        await conn.close()
    assert set(changes) == {depositor, seller}
    # The seller also deposited 30,000, short of silver; its sales reach gold.
    assert levels == {depositor: silver["id"], seller: gold["id"], idle: bronze["id"]}
    assert changes[seller].reason == "sales of 15000 over the last 7 days ≥ 15000"
    assert changes[seller].rule is not None and changes[seller].rule["to_level_id"] == gold["id"]
    assert changes[depositor].kind == "automatic"

    history = (await api.get(f"/v1/agents/{seller}/level-changes")).json()["data"]
    assert [(h["from_level_id"], h["to_level_id"], h["kind"]) for h in history] == [
        (bronze["id"], gold["id"], "automatic")
    ]
    # The upgraded agent pays its new level's price (once its cached key expires).
    app.state.principals.clear()
    app.state.issuance.terms.clear()
    assert (await api.issue(seller_auth, sku, 1)).json()["amount"] == 1000


async def test_downgrades_only_when_the_level_allows_and_after_the_window(
    api: Api, database_url: str
) -> None:
    low = await api.level(1, {})
    high = await api.level(2, {})
    rule = {"metric": "sales", "threshold": 1, "window_days": 10, "to_level_id": low["id"]}
    refused = await api.patch(f"/v1/agent-levels/{high['id']}", {"upgrade_rules": [rule]})
    assert refused.status_code == 422 and refused.json()["code"] == "auto_downgrade_disabled"
    allowed = await api.patch(
        f"/v1/agent-levels/{high['id']}", {"auto_downgrade": True, "upgrade_rules": [rule]}
    )
    assert allowed.status_code == 200, allowed.text
    agent_id, _ = await api.agent(high["id"])

    now = datetime.now(UTC) + timedelta(minutes=1)
    conn = await asyncpg.connect(database_url)
    try:
        # A newcomer has had no time to sell: kept for the window.
        assert agent_id not in {c.agent_id for c in await run_upgrades(conn, now)}
        [change] = [
            c for c in await run_upgrades(conn, now + timedelta(days=11)) if c.agent_id == agent_id
        ]
    finally:
        await conn.close()
    assert (change.from_level_id, change.to_level_id) == (high["id"], low["id"])
    assert change.reason == "sales of 0 over the last 10 days < 1"


async def test_an_operator_changes_a_level_by_hand(api: Api, database_url: str) -> None:
    one, two = await api.level(1, {}), await api.level(2, {})
    agent_id, _ = await api.agent(one["id"])
    path = f"/v1/agents/{agent_id}/level-changes"
    headers = {"Idempotency-Key": f"lc-{agent_id}"}
    body = {"level_id": two["id"], "reason": "大客户"}
    made = await api.post(path, body, **headers)
    assert made.status_code == 201, made.text
    assert (await api.post(path, body, **headers)).content == made.content
    change = made.json()
    assert (change["kind"], change["reason"], change["from_level_id"]) == (
        "manual",
        "大客户",
        one["id"],
    )
    assert change["actor"].startswith("operator:")
    assert (await api.get(f"/v1/agents/{agent_id}")).json()["level_id"] == two["id"]
    same = await api.post(path, body)
    assert same.status_code == 409 and same.json()["code"] == "level_unchanged"
    nobody = await api.post("/v1/agents/999999999/level-changes", body)
    assert nobody.status_code == 404

    conn = await asyncpg.connect(database_url)
    try:
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'agent.level_changed' AND subject = $1",
            f"agent:{agent_id}",
        )
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("DELETE FROM agent_level_changes WHERE agent_id = $1", agent_id)
    finally:
        await conn.close()
    assert audited == 1


async def test_concurrent_runs_change_each_agent_once(api: Api, database_url: str) -> None:
    low, high = await api.level(1, {}), await api.level(2, {})
    rule = {"metric": "deposits", "threshold": 100, "window_days": 1, "to_level_id": high["id"]}
    await api.patch(f"/v1/agent-levels/{low['id']}", {"upgrade_rules": [rule]})
    agents = [(await api.agent(low["id"], deposit=100))[0] for _ in range(5)]
    now = datetime.now(UTC) + timedelta(minutes=1)
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        runs = await asyncio.gather(*(run_upgrades(c, now) for c in conns))
        recorded = await conns[0].fetchval(
            "SELECT count(*) FROM agent_level_changes WHERE agent_id = ANY($1::bigint[])", agents
        )
    finally:
        for c in conns:
            await c.close()
    mine = [c.agent_id for run in runs for c in run if c.agent_id in agents]
    assert sorted(mine) == sorted(agents)
    assert recorded == len(agents)


class _CountingPool:
    """A pool that counts the statements the terms cache sends."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = 0

    async def fetchrow(self, *args: Any) -> Any:
        self.queries += 1
        return await self.pool.fetchrow(*args)

    async def fetchval(self, *args: Any) -> Any:
        self.queries += 1
        return await self.pool.fetchval(*args)


async def test_tiers_and_parent_prices_cost_no_query_per_request(app: FastAPI, api: Api) -> None:
    sku = await api.product(codes=1)
    top = await api.level(
        3,
        {sku: 1500},
        can_create_sub_agents=True,
        tiers={sku: [{"min_quantity": 10, "unit_price": 1200}]},
    )
    low = await api.level(2, {sku: 1600})
    top_agent, parent = await api.agent(top["id"])
    created = await api.client.post(
        "/v1/me/sub-agents",
        json={"name": "c", "level_id": low["id"], "prices": {sku: 1700}},
        headers=parent,
    )
    child = created.json()["id"]
    cache = TermsCache(ttl_s=3600)
    db = _CountingPool(app.state.runtime.db)
    for quantity in (1, 10, 50, 1, 99):
        _, found = await cache.price(db, top["id"], top_agent, sku, quantity)  # type: ignore[arg-type]
        assert found.unit_price == (1200 if quantity >= 10 else 1500)
    assert db.queries == 1  # the level's terms, tiers and cost basis in one statement
    for _ in range(5):
        _, found = await cache.price(db, low["id"], child, sku, 3)  # type: ignore[arg-type]
        assert found.unit_price == 1700
    assert db.queries == 3  # + the child's level, + its parent's price: once each


async def test_my_price_list_shows_only_the_skus_my_level_may_buy(api: Api) -> None:
    seen, hidden = await api.product(), await api.product()
    level = await api.level(1, {seen: 1500, hidden: 1400}, visible_skus=[seen])
    _, auth = await api.agent(level["id"])
    both = f"/v1/me/prices?sku={seen}&sku={hidden}"
    listed = (await api.client.get(both, headers=auth)).json()["data"]
    assert [p["sku"] for p in listed] == [seen]
    # Paging through the whole list never reaches the hidden SKU either.
    cursor, skus = None, []
    while True:
        page = await api.client.get(
            "/v1/me/prices",
            params={"limit": 500, **({"cursor": cursor} if cursor else {})},
            headers=auth,
        )
        skus += [p["sku"] for p in page.json()["data"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert skus == [seen]
