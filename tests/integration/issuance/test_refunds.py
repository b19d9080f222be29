"""Refunding API issuances through the real app: keys revoked, the buyer's debit returned,
every ancestor's differential reversed from where it is (held or balance), once.

Real PostgreSQL and Redis; the ledger is checked line by line after each story.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from engine.ledger.commissions import release_held
from engine.settings import Settings
from tests.integration.api.conftest import unique_sku
from tests.integration.api.test_finance import (
    LEAF,
    MID,
    TOP,
    agent,
    issue,
    ledger_is_consistent,
    make_tree,
)

DEPOSIT = 100_000


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def http(app: FastAPI, operator_token: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
        c.headers["Authorization"] = f"Bearer {operator_token}"
        yield c


async def refund(
    http: httpx.AsyncClient, issuance_id: str, *, key: str | None = None, **body: object
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return await http.post(f"/v1/issuances/{issuance_id}/refund", json=body, headers=headers)


async def key_states(database_url: str, issuance_id: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT k.state FROM issuances i JOIN issuance_keys ik ON ik.issuance_id = i.id "
            "JOIN card_keys k ON k.id = ik.card_key_id WHERE i.public_id = $1",
            issuance_id,
        )
    finally:
        await conn.close()
    return [r["state"] for r in rows]


async def test_a_refund_returns_the_debit_and_reverses_every_commission(
    http: httpx.AsyncClient, database_url: str
) -> None:
    tree = await make_tree(http, deposit=DEPOSIT)
    # The parent holds its commissions T+7; the grand-parent is credited at once.
    await http.put(f"/v1/agent-levels/{tree.levels['mid']}/commission-hold", json={"days": 7})
    issued = await issue(http, tree, "leaf", 2)
    assert issued.status_code == 201, issued.text
    issuance_id = issued.json()["id"]
    mid, top = await agent(http, tree.agents["mid"]), await agent(http, tree.agents["top"])
    assert (mid["held"], mid["balance"]) == (2 * (LEAF - MID), DEPOSIT)
    assert top["balance"] == DEPOSIT + 2 * (MID - TOP)
    read = await http.get(f"/v1/issuances/{issuance_id}", headers=tree.auth("leaf"))
    assert read.json()["status"] == "issued"
    stock_before = (await http.get(f"/v1/products/{tree.sku}")).json()["stock"]

    # Only an operator refunds.
    forbidden = await http.post(
        f"/v1/issuances/{issuance_id}/refund", json={}, headers=tree.auth("leaf")
    )
    assert forbidden.status_code == 403
    done = await refund(http, issuance_id, reason="客户投诉")
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["id"], body["status"], body["amount"], body["keys_revoked"]) == (
        issuance_id,
        "refunded",
        2 * LEAF,
        2,
    )
    assert body["reason"] == "客户投诉"
    assert sorted(
        (c["agent_id"], c["amount"], c["account"]) for c in body["commissions_reversed"]
    ) == sorted(
        [
            (tree.agents["mid"], 2 * (LEAF - MID), "held"),
            (tree.agents["top"], 2 * (MID - TOP), "balance"),
        ]
    )

    leaf, mid, top = [await agent(http, tree.agents[n]) for n in ("leaf", "mid", "top")]
    assert leaf["balance"] == DEPOSIT
    assert (mid["balance"], mid["held"], mid["commission_total"]) == (DEPOSIT, 0, 0)
    assert (top["balance"], top["commission_total"]) == (DEPOSIT, 0)
    # The keys were shown to the buyer: revoked, never back in the pool.
    assert await key_states(database_url, issuance_id) == ["revoked", "revoked"]
    stock = (await http.get(f"/v1/products/{tree.sku}")).json()["stock"]
    assert stock["available"] == stock_before["available"]
    read = await http.get(f"/v1/issuances/{issuance_id}", headers=tree.auth("leaf"))
    assert read.status_code == 200
    assert read.json()["status"] == "refunded"
    assert read.json()["amount"] == 2 * LEAF and len(read.json()["keys"]) == 2

    again = await refund(http, issuance_id)
    assert again.status_code == 409 and again.json()["code"] == "issuance_already_refunded"
    unknown = await refund(http, "iss_" + "0" * 24)
    assert unknown.status_code == 404 and unknown.json()["code"] == "issuance_not_found"
    bad = await refund(http, issuance_id, reason="a\nb")
    assert bad.status_code == 422

    conn = await asyncpg.connect(database_url)
    try:
        # A reversed held commission is never released afterwards.
        assert await release_held(conn, datetime.now(UTC) + timedelta(days=30)) == 0
        lines = await conn.fetch(
            "SELECT a.code, l.amount FROM journal_entries e JOIN journal_lines l "
            "ON l.entry_id = e.id JOIN accounts a ON a.id = l.account_id "
            "WHERE e.reference = $1 AND e.kind = 'issuance.refund'",
            issuance_id,
        )
        audited = await conn.fetchrow(
            "SELECT actor, detail FROM audit_log WHERE action = 'issuance.refunded' "
            "AND subject = $1",
            f"issuance:{issuance_id}",
        )
        reversal = await conn.fetchval(
            "SELECT count(*) FROM commissions WHERE reference = $1 AND reversed_at IS NOT NULL "
            "AND reversal_entry_id IS NOT NULL",
            issuance_id,
        )
    finally:
        await conn.close()
    # One balanced entry mirroring the sale's.
    assert {r["code"]: r["amount"] for r in lines} == {
        f"agent:{tree.agents['leaf']}:balance": -2 * LEAF,
        f"agent:{tree.agents['mid']}:held": 2 * (LEAF - MID),
        f"agent:{tree.agents['top']}:balance": 2 * (MID - TOP),
        "platform:revenue:CNY": 2 * TOP,
    }
    assert reversal == 2
    assert audited is not None and audited["actor"].startswith("operator:")
    assert '"客户投诉"' in audited["detail"] or "客户投诉" in audited["detail"]
    assert (await http.get("/v1/ledger/trial-balance")).json()["balanced"] is True
    await ledger_is_consistent(database_url)


async def test_a_released_commission_is_taken_back_from_the_balance(
    http: httpx.AsyncClient, database_url: str
) -> None:
    tree = await make_tree(http, deposit=DEPOSIT)
    await http.put(f"/v1/agent-levels/{tree.levels['mid']}/commission-hold", json={"days": 1})
    body = {"sku": tree.sku, "quantity": 1}
    headers = {**tree.auth("leaf"), "Idempotency-Key": "released-1"}
    issued = await http.post("/v1/issuances", json=body, headers=headers)
    assert issued.status_code == 201, issued.text
    assert issued.json()["status"] == "issued"
    conn = await asyncpg.connect(database_url)
    try:
        assert await release_held(conn, datetime.now(UTC) + timedelta(days=2)) >= 1
    finally:
        await conn.close()
    assert (await agent(http, tree.agents["mid"]))["balance"] == DEPOSIT + LEAF - MID
    done = await refund(http, issued.json()["id"])
    assert done.status_code == 200, done.text
    accounts = {(c["agent_id"], c["account"]) for c in done.json()["commissions_reversed"]}
    assert (tree.agents["mid"], "balance") in accounts
    mid = await agent(http, tree.agents["mid"])
    assert (mid["balance"], mid["held"], mid["commission_total"]) == (DEPOSIT, 0, 0)
    assert (await agent(http, tree.agents["leaf"]))["balance"] == DEPOSIT
    # A retry of the original request still answers exactly its first response.
    replay = await http.post("/v1/issuances", json=body, headers=headers)
    assert (replay.status_code, replay.json()) == (201, issued.json())
    assert (await agent(http, tree.agents["leaf"]))["balance"] == DEPOSIT
    await ledger_is_consistent(database_url)


async def test_concurrent_refunds_refund_once(http: httpx.AsyncClient, database_url: str) -> None:
    tree = await make_tree(http, deposit=DEPOSIT)
    issued = [await issue(http, tree, "leaf", 1) for _ in range(2)]
    first, second = (r.json()["id"] for r in issued)

    # Five operators at once, each with its own Idempotency-Key (or none).
    answers = await asyncio.gather(
        *(refund(http, first, key=secrets.token_hex(6) if n % 2 else None) for n in range(5))
    )
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409]
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {
        "issuance_already_refunded"
    }
    # Five retries of one request (one Idempotency-Key): still one refund.
    same = await asyncio.gather(*(refund(http, second, key="refund-once") for _ in range(5)))
    assert {a.status_code for a in same} <= {200, 409}
    assert any(a.status_code == 200 for a in same)
    for answer in same:
        if answer.status_code == 409:
            assert answer.json()["code"] in ("idempotency_in_progress", "issuance_already_refunded")
    replay = await refund(http, second, key="refund-once")
    assert replay.status_code == 200 and replay.headers.get("Idempotent-Replayed") == "true"

    conn = await asyncpg.connect(database_url)
    try:
        entries = await conn.fetch(
            "SELECT reference, count(*) AS n FROM journal_entries WHERE kind = 'issuance.refund' "
            "AND reference = ANY($1::text[]) GROUP BY reference",
            [first, second],
        )
    finally:
        await conn.close()
    assert {r["reference"]: r["n"] for r in entries} == {first: 1, second: 1}
    leaf, mid, top = [await agent(http, tree.agents[n]) for n in ("leaf", "mid", "top")]
    assert leaf["balance"] == mid["balance"] == top["balance"] == DEPOSIT
    await ledger_is_consistent(database_url)


async def test_a_test_issuance_is_refunded_to_the_test_balance(
    http: httpx.AsyncClient, database_url: str
) -> None:
    sku = unique_sku("RFT")
    assert (
        await http.post(
            "/v1/products", json={"sku": sku, "name": "测试卡", "type": "card", "price": 990}
        )
    ).status_code == 201
    codes = [f"{sku}-{secrets.token_hex(6)}" for _ in range(2)]
    imported = await http.post(f"/v1/products/{sku}/batches", json={"codes": codes, "mode": "test"})
    assert imported.status_code == 201, imported.text
    level = await http.post("/v1/agent-levels", json={"name": "t", "rank": 1, "prices": {sku: 500}})
    agent_id = (
        await http.post("/v1/agents", json={"name": "t", "level_id": level.json()["id"]})
    ).json()["id"]
    await http.post(f"/v1/agents/{agent_id}/deposits", json={"amount": 5000, "mode": "test"})
    test_key = (await http.post(f"/v1/agents/{agent_id}/api-keys", json={"mode": "test"})).json()[
        "key"
    ]
    issued = await http.post(
        "/v1/issuances",
        json={"sku": sku, "quantity": 2},
        headers={"Authorization": f"Bearer {test_key}", "Idempotency-Key": "t1"},
    )
    assert issued.status_code == 201, issued.text
    assert (await agent(http, agent_id))["test_balance"] == 4000

    done = await refund(http, issued.json()["id"])
    assert done.status_code == 200, done.text
    assert done.json()["mode"] == "test" and done.json()["commissions_reversed"] == []
    found = await agent(http, agent_id)
    assert (found["test_balance"], found["balance"]) == (5000, 0)
    for mode in ("live", "test"):
        trial = await http.get("/v1/ledger/trial-balance", params={"mode": mode})
        assert trial.json()["balanced"] is True
    read = await http.get(
        f"/v1/issuances/{issued.json()['id']}", headers={"Authorization": f"Bearer {test_key}"}
    )
    assert read.json()["status"] == "refunded"
    assert await key_states(database_url, issued.json()["id"]) == ["revoked", "revoked"]
    await ledger_is_consistent(database_url)
