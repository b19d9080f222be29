from __future__ import annotations

import asyncpg
import httpx
import pytest

from engine.notify import emit_event

PROBLEM = "application/problem+json"
# Nothing listens on the discard port; messages to it fail fast if a worker tries them.
NOWHERE = "http://127.0.0.1:9/hooks"


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["detail"]


async def test_an_endpoint_secret_is_shown_once_and_never_listed(
    operator: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = {"url": "https://merchant.example/kami", "event_types": ["order.paid"]}
    created = await operator.post(
        "/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "wh-create-1"}
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["enabled"] is True
    assert endpoint["event_types"] == ["order.paid"]
    assert endpoint["agent_id"] is None

    replay = await operator.post(
        "/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "wh-create-1"}
    )
    assert replay.json() == endpoint  # a retry creates nothing new

    listed = await operator.get("/v1/webhook-endpoints")
    assert listed.status_code == 200
    assert listed.json()["next_cursor"] is None
    [shown] = listed.json()["data"]
    assert shown["id"] == endpoint["id"]
    assert "secret" not in shown
    assert endpoint["secret"] not in listed.text

    audit = await db.fetchrow(
        "SELECT detail::text AS detail FROM audit_log WHERE action = 'webhook_endpoint.created' "
        "AND subject = $1",
        f"webhook_endpoint:{endpoint['id']}",
    )
    assert audit is not None
    assert endpoint["secret"] not in audit["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://merchant.example/x",
        "merchant.example/hooks",
        "https://",
        "http://a b.example",
        "http://merchant.example:99999/",
        "http://[::1",
        "https://merchant.example/\x00",
    ],
)
async def test_a_bad_url_is_a_422_with_a_code(operator: httpx.AsyncClient, url: str) -> None:
    response = await operator.post("/v1/webhook-endpoints", json={"url": url})
    assert_problem(response, 422, "invalid_webhook_url")


async def test_unknown_event_types_and_agents_are_refused(operator: httpx.AsyncClient) -> None:
    response = await operator.post(
        "/v1/webhook-endpoints", json={"url": NOWHERE, "event_types": ["order.payed"]}
    )
    assert_problem(response, 422, "unknown_event_type")
    assert response.json()["unknown"] == ["order.payed"]
    response = await operator.post(
        "/v1/webhook-endpoints", json={"url": NOWHERE, "agent_id": 2**62}
    )
    assert_problem(response, 404, "agent_not_found")
    response = await operator.post("/v1/webhook-endpoints", json={"url": NOWHERE, "extra": 1})
    assert_problem(response, 422, "invalid_request")


async def test_endpoints_need_an_operator(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/webhook-endpoints"), 401, "unauthenticated")
    assert_problem(
        await client.post("/v1/webhook-endpoints", json={"url": NOWHERE}), 401, "unauthenticated"
    )
    assert_problem(await client.get("/v1/outbox"), 401, "unauthenticated")


async def test_endpoints_page_and_disable(operator: httpx.AsyncClient) -> None:
    ids = []
    for n in range(3):
        response = await operator.post(
            "/v1/webhook-endpoints", json={"url": f"https://m{n}.example/"}
        )
        ids.append(response.json()["id"])
    first = (await operator.get("/v1/webhook-endpoints", params={"limit": 2})).json()
    assert [e["id"] for e in first["data"]] == ids[:2]
    assert first["next_cursor"]
    second = (
        await operator.get(
            "/v1/webhook-endpoints", params={"limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [e["id"] for e in second["data"]] == ids[2:]
    assert second["next_cursor"] is None

    disabled = await operator.delete(f"/v1/webhook-endpoints/{ids[0]}")
    assert disabled.status_code == 200
    assert disabled.json()["enabled"] is False
    again = await operator.delete(f"/v1/webhook-endpoints/{ids[0]}")
    assert again.status_code == 200  # disabling twice is still disabled
    assert_problem(
        await operator.delete("/v1/webhook-endpoints/999999999"), 404, "webhook_endpoint_not_found"
    )
    assert_problem(
        await operator.get("/v1/webhook-endpoints", params={"cursor": "garbage!"}),
        422,
        "invalid_request",
    )


async def test_outbox_lists_by_status_and_retries_only_dead_messages(
    operator: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    created = await operator.post("/v1/webhook-endpoints", json={"url": NOWHERE})
    endpoint_id = created.json()["id"]
    async with db.transaction():
        ids = [(await emit_event(db, "order.paid", {"order_no": f"K{n}"}))[0] for n in range(3)]
    # Two dead letters and one that is not, fixed in place so no worker touches them.
    await db.execute(
        "UPDATE outbox SET status = 'dead', attempts = 16, last_error = 'HTTP 500' "
        "WHERE id = ANY($1)",
        ids[:2],
    )
    await db.execute(
        "UPDATE outbox SET next_attempt_at = now() + interval '1 hour' WHERE id = $1", ids[2]
    )

    page = (await operator.get("/v1/outbox", params={"status": "dead", "limit": 1})).json()
    assert [m["id"] for m in page["data"]] == [ids[1]]  # newest first
    message = page["data"][0]
    assert message["destination"] == str(endpoint_id)
    assert message["topic"] == "order.paid"
    assert message["last_error"] == "HTTP 500"
    assert "payload" not in message
    rest = (
        await operator.get("/v1/outbox", params={"status": "dead", "cursor": page["next_cursor"]})
    ).json()
    assert [m["id"] for m in rest["data"]] == [ids[0]]
    assert rest["next_cursor"] is None
    pending = (await operator.get("/v1/outbox", params={"status": "pending"})).json()
    assert [m["id"] for m in pending["data"]] == [ids[2]]
    assert_problem(
        await operator.get("/v1/outbox", params={"status": "lost"}), 422, "invalid_request"
    )

    not_dead = await operator.post(f"/v1/outbox/{ids[2]}/retry")
    assert_problem(not_dead, 409, "outbox_message_not_dead")
    assert not_dead.json()["message_status"] == "pending"
    assert_problem(
        await operator.post("/v1/outbox/999999999/retry"), 404, "outbox_message_not_found"
    )

    retried = await operator.post(f"/v1/outbox/{ids[0]}/retry", headers={"Idempotency-Key": "rt-1"})
    assert retried.status_code == 200
    assert retried.json()["attempts"] == 0
    assert retried.json()["last_error"] is None
    replay = await operator.post(f"/v1/outbox/{ids[0]}/retry", headers={"Idempotency-Key": "rt-1"})
    assert (replay.status_code, replay.json()["id"]) == (200, ids[0])
    assert (
        await db.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'outbox.retried' AND subject = $1",
            f"outbox:{ids[0]}",
        )
        == 1
    )

    await operator.delete(f"/v1/webhook-endpoints/{endpoint_id}")
    assert_problem(
        await operator.post(f"/v1/outbox/{ids[1]}/retry"), 409, "webhook_endpoint_disabled"
    )
