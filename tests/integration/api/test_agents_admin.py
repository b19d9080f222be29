"""Operator management of agents, and the sandbox boundary of the agent's own routes.

A test key (kami_test_…) reads the sandbox through `/v1/me/...` and is refused (`403
live_key_required`) on anything that moves real money or changes the live business; the
upgrade job counts live money only; operators list, change and suspend agents and read
the same views the agents have, each change audited. Real PostgreSQL and Redis.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI

from api.app import create_app
from engine.distribution.upgrades import run_upgrades
from engine.settings import Settings
from tests.integration.api.test_sandbox_mode import PRICE, Sandbox, _place, _sandbox


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(
        settings.model_copy(
            update={
                "sandbox": True,
                "order_max_unpaid_per_ip": 1000,
                "order_max_unpaid_units_per_ip": 10000,
            }
        )
    )
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


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def audits(database_url: str, action: str, subject: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT actor, detail FROM audit_log WHERE action = $1 AND subject = $2 ORDER BY id",
            action,
            subject,
        )
    finally:
        await conn.close()
    return [{"actor": r["actor"], **orjson.loads(r["detail"])} for r in rows]


async def child_of(client: httpx.AsyncClient, box: Sandbox, *, price: int = PRICE + 100) -> int:
    """A sub-agent of the sandbox's agent, one rank below it."""
    level = await client.post(
        "/v1/agent-levels",
        json={"name": "silver", "rank": 0, "prices": {box.sku: price}},
    )
    assert level.status_code == 201, level.text
    child = await client.post(
        "/v1/agents",
        json={"name": "child", "level_id": level.json()["id"], "parent_id": box.agent_id},
    )
    assert child.status_code == 201, child.text
    child_id: int = child.json()["id"]
    return child_id


# --- the sandbox boundary of /v1/me -------------------------------------------------------


async def test_a_test_key_cannot_move_real_money_or_change_the_live_business(
    client: httpx.AsyncClient, database_url: str
) -> None:
    box = await _sandbox(client)
    child_id = await child_of(client, box)
    before = await box.agent()

    withdrawal = await client.post(
        "/v1/me/withdrawals",
        json={"amount": 1000},
        headers={**auth(box.test_key), "Idempotency-Key": secrets.token_hex(8)},
    )
    assert withdrawal.status_code == 403, withdrawal.text
    assert withdrawal.json()["code"] == "live_key_required"
    assert withdrawal.headers["content-type"].startswith("application/problem+json")

    sub = await client.post(
        "/v1/me/sub-agents",
        json={"name": "x", "level_id": 1, "prices": {}},
        headers=auth(box.test_key),
    )
    assert sub.status_code == 403 and sub.json()["code"] == "live_key_required"

    prices = await client.put(
        f"/v1/me/sub-agents/{child_id}/prices",
        json={"prices": {box.sku: PRICE + 50}},
        headers=auth(box.test_key),
    )
    assert prices.status_code == 403 and prices.json()["code"] == "live_key_required"

    # Nothing moved, nothing was created, nothing was priced.
    assert await box.agent() == before
    listed = await client.get("/v1/agents", params={"parent_id": box.agent_id})
    assert [a["id"] for a in listed.json()["data"]] == [child_id]
    subs = (await client.get(f"/v1/agents/{box.agent_id}/sub-agents")).json()["data"]
    assert subs[0]["prices"] == {}
    assert await audits(database_url, "sub_agent.prices_set", f"agent:{child_id}") == []
    mine = await client.get("/v1/me/withdrawals", headers=auth(box.live_key))
    assert mine.json()["data"] == []

    # The same requests with the live key go through: the refusal is the key's mode.
    live_prices = await client.put(
        f"/v1/me/sub-agents/{child_id}/prices",
        json={"prices": {box.sku: PRICE + 50}},
        headers=auth(box.live_key),
    )
    assert live_prices.status_code == 200, live_prices.text
    live_withdrawal = await client.post(
        "/v1/me/withdrawals", json={"amount": 1000}, headers=auth(box.live_key)
    )
    assert live_withdrawal.status_code == 201, live_withdrawal.text
    # A test key does not see the live withdrawal either: the sandbox has none.
    test_view = await client.get("/v1/me/withdrawals", headers=auth(box.test_key))
    assert test_view.status_code == 200 and test_view.json()["data"] == []


async def test_a_test_key_reads_the_sandbox_and_a_live_key_the_live_books(
    client: httpx.AsyncClient,
) -> None:
    box = await _sandbox(client, live=5, test=4)
    child_id = await child_of(client, box)
    child_live = (await client.post(f"/v1/agents/{child_id}/api-keys")).json()["key"]
    child_test = (
        await client.post(f"/v1/agents/{child_id}/api-keys", json={"mode": "test"})
    ).json()["key"]
    await client.post(f"/v1/agents/{child_id}/deposits", json={"amount": 50_000})
    await client.post(f"/v1/agents/{child_id}/deposits", json={"amount": 5_000, "mode": "test"})

    assert (await box.issue(box.test_key, 2)).status_code == 201
    assert (await box.issue(box.live_key, 1)).status_code == 201
    assert (await box.issue(child_test, 1)).status_code == 201
    assert (await box.issue(child_live, 3)).status_code == 201
    # The child pays PRICE + 100 in each mode; live, its parent earns the 100 per unit
    # (sandbox purchases settle no commissions).
    test_balance = 10_000 - 2 * PRICE
    live_balance = 100_000 - PRICE + 3 * 100

    me_test = (await client.get("/v1/me", headers=auth(box.test_key))).json()
    assert me_test["mode"] == "test"
    assert (me_test["balance"], me_test["held"], me_test["withdrawing"]) == (test_balance, 0, 0)
    assert me_test["commission_total"] == 0
    assert me_test["spendable"] == test_balance
    me_live = (await client.get("/v1/me", headers=auth(box.live_key))).json()
    assert me_live["mode"] == "live"
    assert (me_live["balance"], me_live["commission_total"]) == (live_balance, 300)

    test_iss = (await client.get("/v1/me/issuances", headers=auth(box.test_key))).json()
    live_iss = (await client.get("/v1/me/issuances", headers=auth(box.live_key))).json()
    assert [i["quantity"] for i in test_iss["data"]] == [2]
    assert [i["quantity"] for i in live_iss["data"]] == [1]

    test_lines = (await client.get("/v1/me/statement", headers=auth(box.test_key))).json()
    assert {line["account"] for line in test_lines["data"]} == {"test_balance"}
    assert test_lines["data"][-1]["balance"] == test_balance
    assert {line["kind"] for line in test_lines["data"]} >= {"test.deposit"}
    live_lines = (await client.get("/v1/me/statement", headers=auth(box.live_key))).json()
    assert "test_balance" not in {line["account"] for line in live_lines["data"]}
    assert live_lines["data"][-1]["balance"] == live_balance
    exported = await client.get("/v1/me/statement.csv", headers=auth(box.test_key))
    rows = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
    assert rows and {r["account"] for r in rows} == {"test_balance"}
    assert "test" in exported.headers["content-disposition"]
    # The operator's statement of the agent is its live one.
    operator_lines = (await client.get(f"/v1/agents/{box.agent_id}/statement")).json()
    assert "test_balance" not in {line["account"] for line in operator_lines["data"]}

    test_subs = (await client.get("/v1/me/sub-agents", headers=auth(box.test_key))).json()
    [test_sub] = test_subs["data"]
    assert (test_sub["issuance_count"], test_sub["issuance_total"]) == (1, PRICE + 100)
    assert test_sub["balance"] == 5_000 - (PRICE + 100)
    live_subs = (await client.get("/v1/me/sub-agents", headers=auth(box.live_key))).json()
    [live_sub] = live_subs["data"]
    assert (live_sub["issuance_count"], live_sub["issuance_total"]) == (1, 3 * (PRICE + 100))
    assert live_sub["balance"] == 50_000 - 3 * (PRICE + 100)


async def test_a_test_key_sees_its_test_orders_only(client: httpx.AsyncClient) -> None:
    box = await _sandbox(client, live=2, test=2)
    slug = f"adm-{secrets.token_hex(3)}"
    store = await client.post(
        f"/v1/agents/{box.agent_id}/store",
        json={"slug": slug, "title": "店", "prices": {box.sku: PRICE + 300}},
    )
    assert store.status_code == 201, store.text
    test_order = await _place(client, box.sku, 1, box.test_key, store=slug)
    live_order = await _place(client, box.sku, 1, None, store=slug)
    assert test_order.status_code == 201 and live_order.status_code == 201, live_order.text

    test_view = (await client.get("/v1/me/orders", headers=auth(box.test_key))).json()
    live_view = (await client.get("/v1/me/orders", headers=auth(box.live_key))).json()
    assert [o["order_no"] for o in test_view["data"]] == [test_order.json()["order_no"]]
    assert [o["order_no"] for o in live_view["data"]] == [live_order.json()["order_no"]]
    # The operator's view of the same agent, one mode at a time.
    for mode, order in (("live", live_order), ("test", test_order)):
        seen = await client.get(f"/v1/agents/{box.agent_id}/orders", params={"mode": mode})
        assert [o["order_no"] for o in seen.json()["data"]] == [order.json()["order_no"]]


# --- upgrades count live money only ------------------------------------------------------


async def test_sandbox_sales_and_deposits_never_upgrade_an_agent(
    client: httpx.AsyncClient, database_url: str
) -> None:
    box = await _sandbox(client, live=5, test=5, test_deposit=50_000)
    agent = (await client.get(f"/v1/agents/{box.agent_id}")).json()
    top = await client.post(
        "/v1/agent-levels", json={"name": "platinum", "rank": 5, "prices": {box.sku: PRICE}}
    )
    assert top.status_code == 201
    # Sales of 2 units, or deposits over the live 100 000: test money meets both.
    to = top.json()["id"]
    rules = [
        {"metric": "sales", "threshold": 2 * PRICE, "window_days": 1, "to_level_id": to},
        {"metric": "deposits", "threshold": 100_001, "window_days": 1, "to_level_id": to},
    ]
    patched = await client.patch(
        f"/v1/agent-levels/{agent['level_id']}", json={"upgrade_rules": rules}
    )
    assert patched.status_code == 200, patched.text
    assert (await box.issue(box.test_key, 3)).status_code == 201
    assert (await box.issue(box.live_key, 1)).status_code == 201

    conn = await asyncpg.connect(database_url)
    try:
        later = datetime.now(UTC) + timedelta(minutes=1)
        assert box.agent_id not in {c.agent_id for c in await run_upgrades(conn, later)}
        assert (await client.get(f"/v1/agents/{box.agent_id}")).json()["level_id"] == agent[
            "level_id"
        ]
        # One more live unit meets the sales rule, counted without the test sales.
        assert (await box.issue(box.live_key, 1)).status_code == 201
        [change] = [
            c
            for c in await run_upgrades(conn, later + timedelta(seconds=1))
            if c.agent_id == box.agent_id
        ]
    finally:
        await conn.close()
    assert change.to_level_id == to
    assert change.reason.startswith(f"sales of {2 * PRICE} ")


# --- operator: the agent list, changes, views -------------------------------------------


async def test_the_agent_list_filters_and_pages(client: httpx.AsyncClient) -> None:
    box = await _sandbox(client, live=0, test=0, test_deposit=0)
    first = await child_of(client, box)
    level_id = (await client.get(f"/v1/agents/{first}")).json()["level_id"]
    second = (
        await client.post(
            "/v1/agents",
            json={"name": "second", "level_id": level_id, "parent_id": box.agent_id},
        )
    ).json()["id"]
    suspended = await client.patch(f"/v1/agents/{second}", json={"status": "suspended"})
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"

    children = (await client.get("/v1/agents", params={"parent_id": box.agent_id})).json()
    assert [a["id"] for a in children["data"]] == [first, second]
    assert children["next_cursor"] is None
    assert children["data"][0]["parent_id"] == box.agent_id
    by_level = (await client.get("/v1/agents", params={"level_id": level_id})).json()
    assert [a["id"] for a in by_level["data"]] == [first, second]
    only = await client.get("/v1/agents", params={"parent_id": box.agent_id, "status": "suspended"})
    assert [a["id"] for a in only.json()["data"]] == [second]

    page = (await client.get("/v1/agents", params={"parent_id": box.agent_id, "limit": 1})).json()
    assert [a["id"] for a in page["data"]] == [first]
    rest = (
        await client.get(
            "/v1/agents",
            params={"parent_id": box.agent_id, "limit": 1, "cursor": page["next_cursor"]},
        )
    ).json()
    assert [a["id"] for a in rest["data"]] == [second] and rest["next_cursor"] is None

    everyone = (await client.get("/v1/agents", params={"limit": 500})).json()
    ids = [a["id"] for a in everyone["data"]]
    assert ids == sorted(ids) and {box.agent_id, first, second} <= set(ids)

    for params in ({"cursor": "nope"}, {"status": "gone"}, {"limit": 501}, {"parent_id": 0}):
        bad = await client.get("/v1/agents", params=params)
        assert bad.status_code == 422, params
        assert bad.json()["code"] == "invalid_request"
    agent_key = await client.get("/v1/agents", headers=auth(box.live_key))
    assert agent_key.status_code == 403


async def test_patching_an_agent_is_idempotent_audited_and_checked(
    client: httpx.AsyncClient, database_url: str
) -> None:
    box = await _sandbox(client, live=0, test=0, test_deposit=0)
    headers = {"Idempotency-Key": secrets.token_hex(8)}
    body = {"name": "新名字", "credit_limit": 5_000}
    first = await client.patch(f"/v1/agents/{box.agent_id}", json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert (first.json()["name"], first.json()["credit_limit"]) == ("新名字", 5_000)
    again = await client.patch(f"/v1/agents/{box.agent_id}", json=body, headers=headers)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    changed = await client.patch(
        f"/v1/agents/{box.agent_id}", json={"credit_limit": 1}, headers=headers
    )
    assert changed.status_code == 409 and changed.json()["code"] == "idempotency_conflict"

    [record] = await audits(database_url, "agent.updated", f"agent:{box.agent_id}")
    assert record["actor"].startswith("operator:")
    assert record["changes"] == {
        "name": {"from": "a", "to": "新名字"},
        "credit_limit": {"from": 0, "to": 5_000},
    }
    # The new credit line is spendable at once, through the agent's own key.
    me = (await client.get("/v1/me", headers=auth(box.live_key))).json()
    assert (me["credit_limit"], me["spendable"]) == (5_000, 100_000 + 5_000)

    unchanged = await client.patch(f"/v1/agents/{box.agent_id}", json={"name": "新名字"})
    assert unchanged.status_code == 409 and unchanged.json()["code"] == "agent_unchanged"
    missing = await client.patch("/v1/agents/999999999", json={"name": "x"})
    assert missing.status_code == 404 and missing.json()["code"] == "agent_not_found"
    for bad in (
        {"status": "deleted"},
        {"credit_limit": -1},
        {"credit_limit": "5"},
        {"name": ""},
        {"parent_id": 1},
    ):
        refused = await client.patch(f"/v1/agents/{box.agent_id}", json=bad)
        assert refused.status_code == 422, bad
        assert refused.json()["code"] == "invalid_request"
    assert len(await audits(database_url, "agent.updated", f"agent:{box.agent_id}")) == 1
    assert (await client.get(f"/v1/agents/{box.agent_id}")).json()["credit_limit"] == 5_000


async def test_a_suspended_agent_s_keys_are_refused_until_it_is_active_again(
    client: httpx.AsyncClient, database_url: str
) -> None:
    box = await _sandbox(client, live=2, test=0)
    for key in (box.live_key, box.test_key):
        assert (await client.get("/v1/me", headers=auth(key))).status_code == 200
    suspended = await client.patch(f"/v1/agents/{box.agent_id}", json={"status": "suspended"})
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    for key in (box.live_key, box.test_key):
        refused = await client.get("/v1/me", headers=auth(key))
        assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"
    issued = await box.issue(box.live_key)
    assert issued.status_code == 401
    assert (await box.product())["stock"]["available"] == 2

    active = await client.patch(f"/v1/agents/{box.agent_id}", json={"status": "active"})
    assert active.status_code == 200
    assert (await box.issue(box.live_key)).status_code == 201
    changes = [
        r["changes"] for r in await audits(database_url, "agent.updated", f"agent:{box.agent_id}")
    ]
    assert changes == [
        {"status": {"from": "active", "to": "suspended"}},
        {"status": {"from": "suspended", "to": "active"}},
    ]


async def test_operator_views_of_one_agent(client: httpx.AsyncClient) -> None:
    box = await _sandbox(client, live=3, test=3)
    child_id = await child_of(client, box)
    assert (await box.issue(box.live_key, 1)).status_code == 201
    assert (await box.issue(box.live_key, 2)).status_code == 201
    assert (await box.issue(box.test_key, 1)).status_code == 201

    live = (await client.get(f"/v1/agents/{box.agent_id}/issuances")).json()
    assert [i["quantity"] for i in live["data"]] == [2, 1]
    assert all("keys" not in i for i in live["data"])
    page = (await client.get(f"/v1/agents/{box.agent_id}/issuances", params={"limit": 1})).json()
    rest = (
        await client.get(
            f"/v1/agents/{box.agent_id}/issuances", params={"cursor": page["next_cursor"]}
        )
    ).json()
    assert [i["quantity"] for i in page["data"] + rest["data"]] == [2, 1]
    test = (
        await client.get(f"/v1/agents/{box.agent_id}/issuances", params={"mode": "test"})
    ).json()
    assert [i["quantity"] for i in test["data"]] == [1]
    # The operator sees what the agent sees with its own key.
    mine = (await client.get("/v1/me/issuances", headers=auth(box.live_key))).json()
    assert mine == live

    subs = (await client.get(f"/v1/agents/{box.agent_id}/sub-agents")).json()
    assert [s["id"] for s in subs["data"]] == [child_id] and subs["next_cursor"] is None
    assert (await client.get(f"/v1/agents/{child_id}/sub-agents")).json()["data"] == []
    assert (await client.get(f"/v1/agents/{box.agent_id}/orders")).json()["data"] == []

    for path in ("issuances", "orders", "sub-agents"):
        missing = await client.get(f"/v1/agents/999999999/{path}")
        assert missing.status_code == 404 and missing.json()["code"] == "agent_not_found"
        as_agent = await client.get(f"/v1/agents/{box.agent_id}/{path}", headers=auth(box.live_key))
        assert as_agent.status_code == 403
    bad_mode = await client.get(f"/v1/agents/{box.agent_id}/issuances", params={"mode": "x"})
    assert bad_mode.status_code == 422


# --- audit details -------------------------------------------------------------------------


async def test_store_and_api_key_changes_are_audited_with_what_changed(
    client: httpx.AsyncClient, database_url: str
) -> None:
    box = await _sandbox(client, live=0, test=0, test_deposit=0)
    slug = f"aud-{secrets.token_hex(3)}"
    store = await client.post(
        f"/v1/agents/{box.agent_id}/store",
        json={"slug": slug, "title": "审计店", "prices": {box.sku: PRICE + 1}},
    )
    assert store.status_code == 201, store.text
    [record] = await audits(database_url, "store.set", f"agent:{box.agent_id}")
    changes = record["changes"]
    assert record["slug"] == slug
    assert changes["title"] == {"from": None, "to": "审计店"}
    assert changes["prices"] == {box.sku: {"from": None, "to": PRICE + 1}}

    keys = await client.get("/v1/api-keys", params={"agent_id": box.agent_id})
    key_id = keys.json()["data"][0]["id"]
    limited = await client.patch(f"/v1/api-keys/{key_id}", json={"rate_limit_per_s": 7})
    assert limited.status_code == 200, limited.text
    signed = await client.patch(f"/v1/api-keys/{key_id}", json={"require_signature": True})
    assert signed.status_code == 200, signed.text
    records = await audits(database_url, "api_key.updated", f"agent:{box.agent_id}")
    assert [(r["fields"], r["rate_limit_per_s"], r["require_signature"]) for r in records] == [
        (["rate_limit_per_s"], 7, False),
        (["require_signature"], 7, True),
    ]
    assert records[1]["secret_created"] is True
    assert await audits(database_url, "api_key.signing_changed", f"agent:{box.agent_id}") == []
