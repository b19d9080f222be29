"""POST /v1/issuances against real PostgreSQL and Redis, through the real application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import orjson
import pytest

from tests.integration.issuance.conftest import Shop, make_shop


async def test_issue_one_key(shop: Shop) -> None:
    response = await shop.issue(1)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("iss_")
    assert (body["sku"], body["quantity"], body["amount"], body["currency"]) == (
        shop.sku,
        1,
        shop.price,
        "CNY",
    )
    assert len(body["keys"]) == 1
    assert body["keys"][0]["code"] in shop.codes
    assert await shop.balance() == 1_000_000 - shop.price
    assert await shop.stock() == {"available": 49, "held": 0, "issued": 1}

    again = await shop.client.get(f"/v1/issuances/{body['id']}", headers=shop.agent())
    assert again.status_code == 200
    assert again.json() == body


async def test_keys_are_handed_out_in_import_order_and_never_twice(shop: Shop) -> None:
    got: list[str] = []
    for _ in range(5):
        response = await shop.issue(3)
        assert response.status_code == 201
        got += [k["code"] for k in response.json()["keys"]]
    assert len(set(got)) == 15
    assert set(got) <= set(shop.codes)


async def test_replay_returns_the_same_response(shop: Shop) -> None:
    first = await shop.issue(2, key="order-42")
    second = await shop.issue(2, key="order-42")
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert await shop.balance() == 1_000_000 - 2 * shop.price
    assert (await shop.stock())["issued"] == 2


async def test_same_key_different_body_is_a_conflict(shop: Shop) -> None:
    assert (await shop.issue(1, key="order-7")).status_code == 201
    conflict = await shop.issue(3, key="order-7")
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "idempotency_conflict"
    assert (await shop.stock())["issued"] == 1
    assert await shop.balance() == 1_000_000 - shop.price


async def test_concurrent_requests_with_one_key_issue_once(shop: Shop) -> None:
    responses = await asyncio.gather(*(shop.issue(2, key="burst") for _ in range(20)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert (await shop.stock())["issued"] == 2
    assert await shop.balance() == 1_000_000 - 2 * shop.price


async def test_quantity_bounds_and_out_of_stock(shop: Shop) -> None:
    for bad in (0, 101, -1):
        response = await shop.issue(bad)
        assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
    response = await shop.issue(51)
    assert (response.status_code, response.json()["code"]) == (409, "out_of_stock")
    assert await shop.balance() == 1_000_000
    assert (await shop.stock())["available"] == 50


async def test_more_than_available_is_out_of_stock(
    app_client: httpx.AsyncClient, operator_token: str
) -> None:
    small = await make_shop(app_client, operator_token, keys=3)
    response = await small.issue(4)
    assert response.status_code == 409
    assert response.json()["code"] == "out_of_stock"
    assert await small.balance() == 1_000_000
    assert await small.stock() == {"available": 3, "held": 0, "issued": 0}
    assert (await small.issue(3)).status_code == 201


async def test_insufficient_balance_is_402_and_takes_nothing(
    app_client: httpx.AsyncClient, operator_token: str
) -> None:
    poor = await make_shop(app_client, operator_token, keys=5, deposit=2000, price=1500)
    assert (await poor.issue(1)).status_code == 201
    response = await poor.issue(1)
    assert response.status_code == 402
    assert response.json()["code"] == "insufficient_balance"
    assert await poor.balance() == 500
    assert await poor.stock() == {"available": 4, "held": 0, "issued": 1}


async def test_concurrent_debits_beyond_the_funds_are_refused_and_the_rest_committed(
    app_client: httpx.AsyncClient, operator_token: str, database_url: str
) -> None:
    # Every request passes the pre-check (the funds cover one each); the flushes find that
    # only four fit, refuse the rest and put their keys back.
    poor = await make_shop(app_client, operator_token, keys=20, deposit=6000, price=1500)
    responses = await asyncio.gather(*(poor.issue(1) for _ in range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * 4 + [402] * 8
    assert {r.json()["code"] for r in responses if r.status_code == 402} == {"insufficient_balance"}
    assert await poor.balance() == 0
    assert await poor.stock() == {"available": 16, "held": 0, "issued": 4}
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM issuances WHERE sku = $1", poor.sku)
    finally:
        await conn.close()
    assert stored == 4


async def test_credit_limit_allows_a_negative_balance_down_to_it(
    app_client: httpx.AsyncClient, operator_token: str
) -> None:
    credit = await make_shop(app_client, operator_token, keys=5, deposit=0, credit_limit=3000)
    assert (await credit.issue(2)).status_code == 201
    assert await credit.balance() == -3000
    assert (await credit.issue(1)).status_code == 402


async def test_idempotency_key_is_required(shop: Shop) -> None:
    response = await shop.client.post(
        "/v1/issuances", json={"sku": shop.sku, "quantity": 1}, headers=shop.agent()
    )
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_required"


async def test_operators_cannot_issue_and_strangers_cannot_read(shop: Shop) -> None:
    as_operator = await shop.client.post(
        "/v1/issuances",
        json={"sku": shop.sku, "quantity": 1},
        headers={**shop.operator, "Idempotency-Key": "x"},
    )
    assert as_operator.status_code == 403
    issued = (await shop.issue(1)).json()
    other = await make_shop(shop.client, shop.operator["Authorization"].split()[1], keys=1)
    stranger = await shop.client.get(f"/v1/issuances/{issued['id']}", headers=other.agent())
    assert stranger.status_code == 404


async def test_unknown_and_invisible_products(
    app_client: httpx.AsyncClient, operator_token: str, shop: Shop
) -> None:
    missing = await shop.issue(1, sku="NO-SUCH-SKU")
    assert (missing.status_code, missing.json()["code"]) == (404, "product_not_found")

    operator = {"Authorization": f"Bearer {operator_token}"}
    level = await app_client.post(
        "/v1/agent-levels",
        json={"name": "narrow", "rank": 0, "visible_skus": []},
        headers=operator,
    )
    agent = await app_client.post(
        "/v1/agents", json={"name": "narrow", "level_id": level.json()["id"]}, headers=operator
    )
    key = (
        await app_client.post(f"/v1/agents/{agent.json()['id']}/api-keys", headers=operator)
    ).json()["key"]
    hidden = await app_client.post(
        "/v1/issuances",
        json={"sku": shop.sku, "quantity": 1},
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "k"},
    )
    assert (hidden.status_code, hidden.json()["code"]) == (403, "product_not_visible")


async def test_concurrent_flash_sale_never_oversells(
    app_client: httpx.AsyncClient, operator_token: str, database_url: str
) -> None:
    sale = await make_shop(app_client, operator_token, keys=150, price=100)
    responses = await asyncio.gather(*(sale.issue(1) for _ in range(220)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 150
    assert statuses.count(409) == 70
    codes = [r.json()["keys"][0]["code"] for r in responses if r.status_code == 201]
    assert len(set(codes)) == 150
    assert set(codes) == set(sale.codes)
    assert await sale.balance() == 1_000_000 - 150 * 100
    conn = await asyncpg.connect(database_url)
    try:
        issued = await conn.fetchval(
            "SELECT count(*) FROM issuance_keys ik JOIN issuances i ON i.id = ik.issuance_id "
            "WHERE i.sku = $1",
            sale.sku,
        )
        debits = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM journal_lines l JOIN accounts a "
            "ON a.id = l.account_id WHERE a.agent_id = $1 AND l.amount > 0",
            sale.agent_id,
        )
    finally:
        await conn.close()
    assert issued == 150
    assert debits == 150 * 100
    trial = (await app_client.get("/v1/ledger/trial-balance", headers=sale.operator)).json()
    assert trial["balanced"] is True


async def test_metrics_show_issuance_results_flushes_and_stock(shop: Shop) -> None:
    assert (await shop.issue(2)).status_code == 201
    assert (await shop.issue(60)).status_code == 409
    text = (await shop.client.get("/metrics")).text
    assert f'kami_stock_available{{sku="{shop.sku}"}} 48.0' in text
    assert f'kami_stock_issued{{sku="{shop.sku}"}} 2.0' in text
    assert 'kami_issuance_total{result="issued"}' in text
    assert 'kami_issuance_total{result="out_of_stock"}' in text
    assert "kami_batcher_flush_size_bucket" in text
    assert "kami_issuance_duration_seconds_bucket" in text
    for code in shop.codes:
        assert code not in text


async def test_every_reveal_is_audited(shop: Shop, database_url: str) -> None:
    issued = (await shop.issue(1)).json()
    for _ in range(2):
        assert (
            await shop.client.get(f"/v1/issuances/{issued['id']}", headers=shop.agent())
        ).status_code == 200
    conn = await asyncpg.connect(database_url)
    try:
        reveals = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'issuance.revealed' AND subject = $1",
            f"issuance:{issued['id']}",
        )
    finally:
        await conn.close()
    assert reveals == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"sku": ', 400, "malformed_request"),
        (b"[]", 422, "invalid_request"),
        (b'{"sku": "A\\u0000B", "quantity": 1}', 422, "invalid_request"),
        (b'{"sku": "X", "quantity": -1}', 422, "invalid_request"),
        (b'{"sku": "X", "quantity": 1e100}', 422, "invalid_request"),
        (b'{"sku": "X", "quantity": 99999999999999999999999}', 422, "invalid_request"),
        (b'{"sku": "X", "quantity": "1"}', 422, "invalid_request"),
        (b'{"sku": "X", "quantity": true}', 422, "invalid_request"),
        (b'{"sku": ["X"], "quantity": 1}', 422, "invalid_request"),
        (
            b'{"sku": "X", "quantity": 1, "reference": "' + b"r" * 5000 + b'"}',
            422,
            "invalid_request",
        ),
        # Long but under the issuance body limit (64 KiB): the field's own bound refuses it.
        (b'{"sku": "' + b"S" * 60_000 + b'", "quantity": 1}', 422, "invalid_request"),
        (b'{"sku": "' + b"S" * 100_000 + b'", "quantity": 1}', 413, "payload_too_large"),
        (b"\xff\xfe not even utf-8", 400, "malformed_request"),
    ],
)
async def test_bad_issuance_bodies_are_refused_and_change_nothing(
    shop: Shop, body: bytes, status: int, code: str
) -> None:
    response = await shop.client.post(
        "/v1/issuances",
        content=body,
        headers={**shop.agent(), "Idempotency-Key": "bad", "Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await shop.balance() == 1_000_000
    assert (await shop.stock())["issued"] == 0


async def test_a_body_over_the_limit_is_413(shop: Shop) -> None:
    huge = b'{"codes": ["' + b"A" * (33 << 20) + b'"]}'
    response = await shop.client.post(
        f"/v1/products/{shop.sku}/batches",
        content=huge,
        headers={**shop.operator, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_the_hot_path_refuses_big_bodies_and_maps_unexpected_errors(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # IssuanceHotPath runs ahead of the middleware: it applies the JSON body limit and the
    # application's exception handlers itself, and counts and tags what it answers.
    headers = {**shop.agent(), "Idempotency-Key": "hot-big", "Content-Type": "application/json"}
    declared = await shop.client.post("/v1/issuances", content=b" " * (65 << 10), headers=headers)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * (4 << 10)

    streamed = await shop.client.post("/v1/issuances", content=chunks(), headers=headers)
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"
        assert response.headers["x-request-id"]

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    service = shop.client._transport.app.state.issuance  # type: ignore[attr-defined]
    monkeypatch.setattr(service, "issue", broken)
    failed = await shop.issue(1, key="hot-bug")
    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/problem+json"
    assert failed.json()["code"] == "internal_error"
    assert "a bug" not in failed.text
    metrics = (await shop.client.get("/metrics")).text
    for status in ("413", "500"):
        assert (
            f'kami_http_requests_total{{method="POST",route="/v1/issuances",status="{status}"}}'
            in metrics
        )
    monkeypatch.undo()
    assert (await shop.issue(1, key="hot-bug")).status_code == 201


async def test_a_client_that_leaves_mid_body_is_not_served(shop: Shop) -> None:
    # The first chunk is a whole, valid issuance: acting on it would issue a key nobody
    # asked to the end for (and the retry below would then be an idempotency conflict).
    app = shop.client._transport.app  # type: ignore[attr-defined]
    body = orjson.dumps({"sku": shop.sku, "quantity": 1})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/issuances",
        "raw_path": b"/v1/issuances",
        "root_path": "",
        "query_string": b"",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"host", b"test"),
            (b"authorization", f"Bearer {shop.api_key}".encode()),
            (b"idempotency-key", b"gone"),
            (b"content-type", b"application/json"),
        ],
    }
    incoming = iter(
        [{"type": "http.request", "body": body, "more_body": True}, {"type": "http.disconnect"}]
    )
    sent: list[object] = []

    async def receive() -> object:
        return next(incoming)

    async def send(message: object) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent == []
    retry = await shop.issue(2, key="gone")
    assert retry.status_code == 201
    assert len(retry.json()["keys"]) == 2


async def test_a_deposit_is_spendable_at_once(
    app_client: httpx.AsyncClient, operator_token: str
) -> None:
    broke = await make_shop(app_client, operator_token, keys=3, deposit=0)
    assert (await broke.issue(1)).status_code == 402
    await broke.client.post(
        f"/v1/agents/{broke.agent_id}/deposits", json={"amount": 5000}, headers=broke.operator
    )
    assert (await broke.issue(1)).status_code == 201


async def test_the_fast_path_answers_like_the_routed_endpoint(shop: Shop) -> None:
    # POST /v1/issuances skips FastAPI (api.routers.issuance.IssuanceHotPath):
    # auth failures, metrics and problem documents must not notice.
    client = shop.client
    body = {"sku": shop.sku, "quantity": 1}
    missing = await client.post("/v1/issuances", json=body, headers={"Idempotency-Key": "fp-1"})
    basic = await client.post(
        "/v1/issuances",
        json=body,
        headers={"Idempotency-Key": "fp-2", "Authorization": "Basic abc"},
    )
    wrong = await client.post(
        "/v1/issuances",
        json=body,
        headers={"Idempotency-Key": "fp-3", "Authorization": "Bearer kami_live_nope"},
    )
    for response in (missing, basic, wrong):
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "unauthenticated"
        assert response.headers["x-request-id"]
    ok = await shop.issue(1)
    assert ok.status_code == 201
    # The other methods on the path still go through the router.
    assert (await client.get("/v1/issuances", headers=shop.agent())).status_code == 405
    metrics = (await client.get("/metrics")).text
    assert 'kami_http_requests_total{method="POST",route="/v1/issuances",status="201"}' in metrics
    assert 'kami_http_requests_total{method="POST",route="/v1/issuances",status="401"}' in metrics
