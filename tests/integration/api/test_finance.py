"""Finance through the real app: differential commissions on API issuances, T+N holds and
their release, withdrawals, statements (JSON, CSV, XLSX) and the agent's own views.

Real PostgreSQL and Redis; the ledger is checked line by line after each story.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from engine._core import parse_codes
from engine.ledger.commissions import release_held
from engine.settings import Settings
from tests.integration.api.conftest import unique_sku

RETAIL = 2000
TOP, MID, LEAF = 1000, 1200, 1500


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
async def http(app: FastAPI, operator_token: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
        c.headers["Authorization"] = f"Bearer {operator_token}"
        yield c


@dataclass
class Tree:
    """top <- mid <- leaf, one level each, with an API key per agent."""

    sku: str
    levels: dict[str, int]
    agents: dict[str, int]
    keys: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


async def make_tree(http: httpx.AsyncClient, *, keys: int = 20, deposit: int = 100_000) -> Tree:
    sku = unique_sku("FIN")
    created = await http.post(
        "/v1/products", json={"sku": sku, "name": "月卡", "type": "card", "price": RETAIL}
    )
    assert created.status_code == 201, created.text
    codes = [f"{sku}-{i}-{secrets.token_hex(4)}" for i in range(keys)]
    assert (
        await http.post(f"/v1/products/{sku}/batches", json={"codes": codes})
    ).status_code == 201
    levels: dict[str, int] = {}
    agents: dict[str, int] = {}
    api_keys: dict[str, str] = {}
    parent: int | None = None
    for rank, (name, price) in enumerate((("top", TOP), ("mid", MID), ("leaf", LEAF))):
        level = await http.post(
            "/v1/agent-levels",
            json={"name": name, "rank": 10 - rank, "prices": {sku: price}, "visible_skus": None},
        )
        levels[name] = level.json()["id"]
        agent = await http.post(
            "/v1/agents", json={"name": name, "level_id": levels[name], "parent_id": parent}
        )
        assert agent.status_code == 201, agent.text
        agents[name] = parent = agent.json()["id"]
        api_keys[name] = (await http.post(f"/v1/agents/{parent}/api-keys")).json()["key"]
        if deposit:
            await http.post(f"/v1/agents/{parent}/deposits", json={"amount": deposit})
    return Tree(sku, levels, agents, api_keys)


async def issue(http: httpx.AsyncClient, tree: Tree, who: str, quantity: int) -> httpx.Response:
    return await http.post(
        "/v1/issuances",
        json={"sku": tree.sku, "quantity": quantity},
        headers={**tree.auth(who), "Idempotency-Key": secrets.token_hex(8)},
    )


async def agent(http: httpx.AsyncClient, agent_id: int) -> dict[str, int]:
    found = await http.get(f"/v1/agents/{agent_id}")
    assert found.status_code == 200
    body: dict[str, int] = found.json()
    return body


async def ledger_is_consistent(database_url: str) -> None:
    """Every entry balances, and every account's running balance is the sum of its lines."""
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT coalesce(sum(amount), 0) FROM journal_lines") == 0
        unbalanced = await conn.fetchval(
            "SELECT count(*) FROM (SELECT entry_id FROM journal_lines GROUP BY entry_id "
            "HAVING sum(amount) <> 0) u"
        )
        assert unbalanced == 0
        drift = await conn.fetch(
            "SELECT a.code FROM accounts a LEFT JOIN (SELECT account_id, sum(amount) AS s "
            "FROM journal_lines GROUP BY account_id) l ON l.account_id = a.id "
            "WHERE a.balance <> coalesce(l.s, 0)"
        )
        assert drift == []
    finally:
        await conn.close()


async def test_an_issuance_pays_each_ancestor_its_differential_in_one_entry(
    http: httpx.AsyncClient, database_url: str
) -> None:
    tree = await make_tree(http)
    issued = await issue(http, tree, "leaf", 2)
    assert issued.status_code == 201, issued.text
    assert issued.json()["amount"] == 2 * LEAF

    leaf, mid, top = [await agent(http, tree.agents[n]) for n in ("leaf", "mid", "top")]
    assert leaf["balance"] == 100_000 - 2 * LEAF
    assert mid["balance"] == 100_000 + 2 * (LEAF - MID)
    assert top["balance"] == 100_000 + 2 * (MID - TOP)
    assert (mid["commission_total"], top["commission_total"], leaf["commission_total"]) == (
        2 * (LEAF - MID),
        2 * (MID - TOP),
        0,
    )
    assert mid["held"] == top["held"] == 0

    conn = await asyncpg.connect(database_url)
    try:
        lines = await conn.fetch(
            "SELECT a.code, l.amount FROM journal_entries e JOIN journal_lines l "
            "ON l.entry_id = e.id JOIN accounts a ON a.id = l.account_id "
            "WHERE e.reference = $1 ORDER BY a.code",
            issued.json()["id"],
        )
    finally:
        await conn.close()
    assert {r["code"]: r["amount"] for r in lines} == {
        f"agent:{tree.agents['leaf']}:balance": 2 * LEAF,
        f"agent:{tree.agents['mid']}:balance": -2 * (LEAF - MID),
        f"agent:{tree.agents['top']}:balance": -2 * (MID - TOP),
        "platform:revenue:CNY": -2 * TOP,
    }
    # A top-level agent's purchase pays nobody.
    assert (await issue(http, tree, "top", 1)).status_code == 201
    assert (await agent(http, tree.agents["top"]))["commission_total"] == 2 * (MID - TOP)
    assert (await http.get("/v1/ledger/trial-balance")).json()["balanced"] is True
    await ledger_is_consistent(database_url)


async def test_a_tree_priced_out_of_order_refuses_the_issuance_and_takes_nothing(
    http: httpx.AsyncClient,
) -> None:
    tree = await make_tree(http, keys=3)
    sku_price = {tree.sku: LEAF + 100}
    level = await http.post(
        "/v1/agent-levels", json={"name": "dear", "rank": 3, "prices": sku_price}
    )
    # A child at the leaf's price under a parent at that dearer level.
    dear = await http.post("/v1/agents", json={"name": "dear", "level_id": level.json()["id"]})
    cheap = await http.post(
        "/v1/agents",
        json={"name": "cheap", "level_id": tree.levels["leaf"], "parent_id": dear.json()["id"]},
    )
    cheap_id = cheap.json()["id"]
    await http.post(f"/v1/agents/{cheap_id}/deposits", json={"amount": 10_000})
    key = (await http.post(f"/v1/agents/{cheap_id}/api-keys")).json()["key"]
    refused = await http.post(
        "/v1/issuances",
        json={"sku": tree.sku, "quantity": 1},
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "x1"},
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "price_below_cost"
    assert (await http.get(f"/v1/products/{tree.sku}")).json()["stock"]["available"] == 3
    assert (await agent(http, cheap_id))["balance"] == 10_000


async def test_held_commissions_wait_their_days_then_a_release_moves_them(
    http: httpx.AsyncClient, database_url: str
) -> None:
    tree = await make_tree(http)
    hold = await http.put(
        f"/v1/agent-levels/{tree.levels['mid']}/commission-hold", json={"days": 3}
    )
    assert hold.status_code == 200 and hold.json() == {"days": 3}
    bad = await http.put(
        f"/v1/agent-levels/{tree.levels['mid']}/commission-hold", json={"days": -1}
    )
    assert bad.status_code == 422
    missing = await http.put("/v1/agent-levels/999999999/commission-hold", json={"days": 1})
    assert missing.status_code == 404 and missing.json()["code"] == "level_not_found"
    assert (await issue(http, tree, "leaf", 3)).status_code == 201
    mid = await agent(http, tree.agents["mid"])
    assert mid["balance"] == 100_000
    assert mid["held"] == 3 * (LEAF - MID)
    assert mid["commission_total"] == 3 * (LEAF - MID)
    # The top level holds nothing: credited at once.
    assert (await agent(http, tree.agents["top"]))["balance"] == 100_000 + 3 * (MID - TOP)
    me = (await http.get("/v1/me", headers=tree.auth("mid"))).json()
    assert (me["balance"], me["held"], me["spendable"]) == (100_000, 3 * (LEAF - MID), 100_000)

    conn = await asyncpg.connect(database_url)
    try:
        now = datetime.now(UTC)
        assert await release_held(conn, now + timedelta(days=2)) == 0
        assert (await agent(http, tree.agents["mid"]))["held"] == 3 * (LEAF - MID)
        released = await release_held(conn, now + timedelta(days=3, minutes=1))
        assert released >= 1
        assert await release_held(conn, now + timedelta(days=4)) == 0
        kinds = await conn.fetch(
            "SELECT e.kind FROM commissions c JOIN journal_entries e ON e.id = c.release_entry_id "
            "WHERE c.agent_id = $1",
            tree.agents["mid"],
        )
    finally:
        await conn.close()
    assert [r["kind"] for r in kinds] == ["commission.release"]
    mid = await agent(http, tree.agents["mid"])
    assert (mid["balance"], mid["held"]) == (100_000 + 3 * (LEAF - MID), 0)
    assert mid["commission_total"] == 3 * (LEAF - MID)
    await ledger_is_consistent(database_url)


async def test_a_refund_takes_held_commissions_back_from_held(
    app: FastAPI, http: httpx.AsyncClient, database_url: str
) -> None:
    tree = await make_tree(http)
    await http.put(f"/v1/agent-levels/{tree.levels['mid']}/commission-hold", json={"days": 7})
    slug = f"leaf-{secrets.token_hex(3)}"
    store = await http.post(
        f"/v1/agents/{tree.agents['leaf']}/store",
        json={"slug": slug, "title": "Leaf", "prices": {tree.sku: RETAIL}},
    )
    assert store.status_code == 201, store.text
    transport = httpx.ASGITransport(app=app, client=("10.9.8.7", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as buyer:
        order = await buyer.post(
            "/v1/orders",
            json={"sku": tree.sku, "quantity": 1, "contact": {"email": "b@example.com"},
                  "payment_method": "sandbox", "store": slug},
        )  # fmt: skip
        assert order.status_code == 201, order.text
        order_no = order.json()["order_no"]
        assert (await buyer.post(f"/v1/payments/sandbox/{order_no}/pay")).is_success
    mid = await agent(http, tree.agents["mid"])
    leaf = await agent(http, tree.agents["leaf"])
    assert (mid["held"], mid["balance"]) == (LEAF - MID, 100_000)
    assert leaf["balance"] == 100_000 + RETAIL - LEAF  # the leaf's level holds nothing
    assert leaf["commission_total"] == RETAIL - LEAF

    mine = await http.get("/v1/me/orders", headers=tree.auth("leaf"))
    assert [o["order_no"] for o in mine.json()["data"]] == [order_no]
    assert mine.json()["data"][0]["status"] == "delivered"

    refund = await http.post(f"/v1/orders/{order_no}/refund", json={"reason": "test"})
    assert refund.status_code == 200, refund.text
    mid = await agent(http, tree.agents["mid"])
    leaf = await agent(http, tree.agents["leaf"])
    top = await agent(http, tree.agents["top"])
    assert (mid["held"], mid["balance"], mid["commission_total"]) == (0, 100_000, 0)
    assert (leaf["balance"], leaf["commission_total"]) == (100_000, 0)
    assert (top["balance"], top["commission_total"]) == (100_000, 0)
    # A reversed commission is never released afterwards.
    conn = await asyncpg.connect(database_url)
    try:
        assert await release_held(conn, datetime.now(UTC) + timedelta(days=30)) == 0
    finally:
        await conn.close()
    assert (await agent(http, tree.agents["mid"]))["balance"] == 100_000
    await ledger_is_consistent(database_url)


async def test_withdrawals_reserve_then_pay_out_or_return(
    http: httpx.AsyncClient, database_url: str
) -> None:
    tree = await make_tree(http, deposit=10_000)
    me = tree.auth("leaf")
    leaf_id = tree.agents["leaf"]

    too_much = await http.post("/v1/me/withdrawals", json={"amount": 10_001}, headers=me)
    assert too_much.status_code == 402 and too_much.json()["code"] == "insufficient_balance"
    zero = await http.post("/v1/me/withdrawals", json={"amount": 0}, headers=me)
    assert zero.status_code == 422
    by_operator = await http.post("/v1/me/withdrawals", json={"amount": 1})
    assert by_operator.status_code == 403

    headers = {**me, "Idempotency-Key": "wd-1"}
    body = {"amount": 4_000, "destination": "ICBC 6222 **** 1234"}
    first = await http.post("/v1/me/withdrawals", json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await http.post("/v1/me/withdrawals", json=body, headers=headers)
    assert again.status_code == 201 and again.json() == first.json()
    other = await http.post("/v1/me/withdrawals", json={"amount": 5}, headers=headers)
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
    withdrawal = first.json()
    assert withdrawal["status"] == "requested"

    summary = (await http.get("/v1/me", headers=me)).json()
    assert (summary["balance"], summary["withdrawing"]) == (6_000, 4_000)
    # The reserved funds cannot be spent (5 x 1,500 > the 6,000 left) nor withdrawn twice.
    assert (await issue(http, tree, "leaf", 5)).status_code == 402
    second = await http.post("/v1/me/withdrawals", json={"amount": 6_001}, headers=me)
    assert second.status_code == 402

    listed = await http.get("/v1/withdrawals", params={"status": "requested", "agent_id": leaf_id})
    assert [w["id"] for w in listed.json()["data"]] == [withdrawal["id"]]

    approve = f"/v1/withdrawals/{withdrawal['id']}/approve"
    approved = await http.post(approve, json={"reason": "paid 2026-12-02"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    assert approved.json()["decided_by"].startswith("operator:")
    # Idempotent: approving again changes nothing; rejecting now is refused.
    assert (await http.post(approve)).json()["status"] == "approved"
    late = await http.post(f"/v1/withdrawals/{withdrawal['id']}/reject")
    assert late.status_code == 409 and late.json()["code"] == "invalid_withdrawal_state"
    assert (await http.post("/v1/withdrawals/999999999/approve")).status_code == 404

    summary = (await http.get("/v1/me", headers=me)).json()
    assert (summary["balance"], summary["withdrawing"]) == (6_000, 0)

    rejected_one = await http.post("/v1/me/withdrawals", json={"amount": 1_000}, headers=me)
    rejected = await http.post(
        f"/v1/withdrawals/{rejected_one.json()['id']}/reject", json={"reason": "wrong account"}
    )
    assert rejected.json()["status"] == "rejected"
    summary = (await http.get("/v1/me", headers=me)).json()
    assert (summary["balance"], summary["withdrawing"]) == (6_000, 0)
    mine = await http.get("/v1/me/withdrawals", headers=me, params={"limit": 1})
    assert len(mine.json()["data"]) == 1 and mine.json()["next_cursor"]
    rest = await http.get(
        "/v1/me/withdrawals", headers=me, params={"cursor": mine.json()["next_cursor"]}
    )
    assert [w["status"] for w in mine.json()["data"] + rest.json()["data"]] == [
        "rejected",
        "approved",
    ]

    conn = await asyncpg.connect(database_url)
    try:
        audited = await conn.fetch(
            "SELECT action FROM audit_log WHERE subject = $1 ORDER BY id",
            f"withdrawal:{withdrawal['id']}",
        )
    finally:
        await conn.close()
    assert [r["action"] for r in audited] == ["withdrawal.requested", "withdrawal.approved"]
    await ledger_is_consistent(database_url)


async def test_statements_page_and_export_without_keys(
    http: httpx.AsyncClient, database_url: str
) -> None:
    tree = await make_tree(http, deposit=50_000)
    issued = [await issue(http, tree, "leaf", 1) for _ in range(3)]
    codes = {key["code"] for r in issued for key in r.json()["keys"]}
    withdrawal = await http.post(
        "/v1/me/withdrawals", json={"amount": 1_000}, headers=tree.auth("leaf")
    )
    assert withdrawal.status_code == 201

    leaf = tree.agents["leaf"]
    pages: list[dict[str, object]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await http.get(f"/v1/agents/{leaf}/statement", params=params)
        assert page.status_code == 200, page.text
        pages.extend(page.json()["data"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    # deposit, three issuances, the withdrawal's two lines (balance and withdrawing).
    assert [(line["kind"], line["account"]) for line in pages] == [
        ("deposit", "balance"),
        ("issuance", "balance"),
        ("issuance", "balance"),
        ("issuance", "balance"),
        ("withdrawal.requested", "balance"),
        ("withdrawal.requested", "withdrawing"),
    ]
    balances = [line["balance"] for line in pages if line["account"] == "balance"]
    assert balances == [50_000, 48_500, 47_000, 45_500, 44_500]
    assert pages[-1]["amount"] == 1_000 and pages[-1]["balance"] == 1_000
    assert pages[1]["reference"] == issued[0].json()["id"]
    mine = await http.get("/v1/me/statement", headers=tree.auth("leaf"), params={"limit": 500})
    assert mine.json()["data"] == pages
    # A period shows its lines with balances that still count everything before.
    since = {"since": str(pages[1]["created_at"])}
    period = await http.get(f"/v1/agents/{leaf}/statement", params=since)
    assert period.json()["data"] == [p for p in pages if p["created_at"] >= pages[1]["created_at"]]
    assert period.json()["data"][0]["balance"] == 48_500
    backwards = await http.get(
        f"/v1/agents/{leaf}/statement", params={**since, "until": "2000-01-01T00:00:00Z"}
    )
    assert backwards.status_code == 422 and backwards.json()["code"] == "invalid_request"

    csv_response = await http.get(f"/v1/agents/{leaf}/statement.csv")
    assert csv_response.status_code == 200
    assert csv_response.headers["content-type"].startswith("text/csv")
    text = csv_response.content.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "entry_id",
        "created_at",
        "account",
        "kind",
        "reference",
        "amount",
        "balance",
    ]
    assert [int(r[6]) for r in rows[1:]] == [line["balance"] for line in pages]
    same = await http.get("/v1/me/statement", headers=tree.auth("leaf"), params={"format": "csv"})
    assert same.content == csv_response.content

    xlsx = await http.get(f"/v1/agents/{leaf}/statement", params={"format": "xlsx"})
    assert xlsx.status_code == 200 and xlsx.content[:2] == b"PK"
    kinds = parse_codes(xlsx.content, "xlsx", column=3).codes
    assert kinds == ["kind", *[str(line["kind"]) for line in pages]]
    mine_xlsx = await http.get("/v1/me/statement.xlsx", headers=tree.auth("leaf"))
    assert parse_codes(mine_xlsx.content, "xlsx", column=6).codes[1:] == [
        str(line["balance"]) for line in pages
    ]
    for export in (csv_response.content, xlsx.content, mine_xlsx.content):
        for code in codes:
            assert code.encode() not in export

    bad = await http.get(f"/v1/agents/{leaf}/statement", params={"cursor": "nonsense"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    assert (await http.get("/v1/agents/999999999/statement")).status_code == 404
    # Another agent's key sees its own lines only: the top agent's commission on the
    # leaf's issuance, not the leaf's debit.
    other = await http.get("/v1/me/statement", headers=tree.auth("top"))
    on_it = [line for line in other.json()["data"] if line["reference"] == issued[0].json()["id"]]
    assert [(line["kind"], line["amount"]) for line in on_it] == [("issuance", MID - TOP)]


async def test_a_reference_that_looks_like_a_formula_is_defused_in_csv(
    http: httpx.AsyncClient,
) -> None:
    tree = await make_tree(http, deposit=0)
    top = tree.agents["top"]
    deposit = await http.post(
        f"/v1/agents/{top}/deposits", json={"amount": 100, "reference": "=HYPERLINK(1)"}
    )
    assert deposit.status_code == 201
    text = (await http.get(f"/v1/agents/{top}/statement.csv")).content.decode("utf-8-sig")
    assert "'=HYPERLINK(1)" in text


async def test_my_views(http: httpx.AsyncClient) -> None:
    tree = await make_tree(http)
    assert (await issue(http, tree, "leaf", 2)).status_code == 201
    assert (await issue(http, tree, "leaf", 1)).status_code == 201
    assert (await issue(http, tree, "mid", 1)).status_code == 201

    me = (await http.get("/v1/me", headers=tree.auth("mid"))).json()
    assert me["agent_id"] == tree.agents["mid"]
    assert me["commission_total"] == 3 * (LEAF - MID)
    assert me["balance"] == 100_000 + 3 * (LEAF - MID) - MID
    assert me["credit_limit"] == 0 and me["currency"] == "CNY"

    first = await http.get("/v1/me/issuances", headers=tree.auth("leaf"), params={"limit": 1})
    assert [i["quantity"] for i in first.json()["data"]] == [1]
    assert "keys" not in first.json()["data"][0]
    second = await http.get(
        "/v1/me/issuances",
        headers=tree.auth("leaf"),
        params={"cursor": first.json()["next_cursor"]},
    )
    assert [i["quantity"] for i in second.json()["data"]] == [2]
    assert second.json()["next_cursor"] is None

    subs = (await http.get("/v1/me/sub-agents", headers=tree.auth("mid"))).json()
    assert [s["id"] for s in subs["data"]] == [tree.agents["leaf"]]
    assert (subs["data"][0]["issuance_count"], subs["data"][0]["issuance_total"]) == (2, 3 * LEAF)
    top_subs = (await http.get("/v1/me/sub-agents", headers=tree.auth("top"))).json()
    assert [(s["id"], s["issuance_total"]) for s in top_subs["data"]] == [(tree.agents["mid"], MID)]
    assert (await http.get("/v1/me/sub-agents", headers=tree.auth("leaf"))).json()["data"] == []
    # Operator tokens are not agents.
    assert (await http.get("/v1/me")).status_code == 403
    assert (await http.get("/v1/me", headers={"Authorization": "Bearer nope"})).status_code == 401


async def test_a_batch_with_a_unit_cost_is_owed_to_its_supplier(
    http: httpx.AsyncClient, database_url: str
) -> None:
    sku = unique_sku("SUP")
    await http.post("/v1/products", json={"sku": sku, "name": "卡", "type": "card", "price": 99})
    codes = [f"{sku}-{i}" for i in range(4)]
    batch = await http.post(
        f"/v1/products/{sku}/batches", json={"codes": [*codes, codes[0]], "unit_cost": 30}
    )
    assert batch.status_code == 201 and batch.json()["accepted"] == 4
    free = await http.post(f"/v1/products/{sku}/batches", json={"codes": [f"{sku}-free"]})
    conn = await asyncpg.connect(database_url)
    try:
        lines = await conn.fetch(
            "SELECT a.code, l.amount FROM journal_entries e JOIN journal_lines l "
            "ON l.entry_id = e.id JOIN accounts a ON a.id = l.account_id "
            "WHERE e.kind = 'batch.received' AND e.reference = ANY($1::text[]) ORDER BY a.code",
            [f"batch:{batch.json()['batch_id']}", f"batch:{free.json()['batch_id']}"],
        )
    finally:
        await conn.close()
    # The duplicate is not paid for, and a free batch posts nothing.
    assert [(r["code"], r["amount"]) for r in lines] == [
        ("platform:purchases:CNY", 120),
        ("platform:supplier_payable:CNY", -120),
    ]
    await ledger_is_consistent(database_url)
