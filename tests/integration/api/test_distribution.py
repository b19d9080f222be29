from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.integration.api.conftest import unique_sku


async def _sku(operator: httpx.AsyncClient) -> str:
    sku = unique_sku("D")
    response = await operator.post(
        "/v1/products", json={"sku": sku, "name": "n", "type": "card", "price": 1990}
    )
    assert response.status_code == 201
    return sku


async def _level(operator: httpx.AsyncClient, sku: str) -> dict[str, object]:
    response = await operator.post(
        "/v1/agent-levels",
        json={"name": "金牌代理", "rank": 2, "prices": {sku: 1500}, "visible_skus": [sku]},
    )
    assert response.status_code == 201, response.text
    level: dict[str, object] = response.json()
    return level


async def test_levels_agents_keys_and_deposits(operator: httpx.AsyncClient) -> None:
    sku = await _sku(operator)
    level = await _level(operator, sku)
    assert level["prices"] == {sku: 1500}
    assert level["visible_skus"] == [sku]
    assert (await operator.get(f"/v1/agent-levels/{level['id']}")).json() == level

    parent = await operator.post("/v1/agents", json={"name": "省代", "level_id": level["id"]})
    assert parent.status_code == 201
    assert parent.json()["balance"] == 0
    child = await operator.post(
        "/v1/agents",
        json={
            "name": "市代",
            "level_id": level["id"],
            "parent_id": parent.json()["id"],
            "credit_limit": 5000,
        },
    )
    assert child.status_code == 201
    agent = child.json()
    assert (agent["parent_id"], agent["credit_limit"]) == (parent.json()["id"], 5000)

    key = await operator.post(f"/v1/agents/{agent['id']}/api-keys")
    assert key.status_code == 201
    assert key.json()["key"].startswith("kami_live_")

    deposit = await operator.post(
        f"/v1/agents/{agent['id']}/deposits", json={"amount": 100000, "reference": "bank-123"}
    )
    assert deposit.status_code == 201
    assert deposit.json()["balance"] == 100000
    second = await operator.post(f"/v1/agents/{agent['id']}/deposits", json={"amount": 2345})
    assert second.json()["balance"] == 102345
    assert (await operator.get(f"/v1/agents/{agent['id']}")).json()["balance"] == 102345

    trial = (await operator.get("/v1/ledger/trial-balance")).json()
    assert trial["balanced"] is True
    assert trial["debits"] == trial["credits"] >= 102345


async def test_an_api_key_is_not_an_operator(operator: httpx.AsyncClient) -> None:
    sku = await _sku(operator)
    level = await _level(operator, sku)
    agent = (await operator.post("/v1/agents", json={"name": "a", "level_id": level["id"]})).json()
    key = (await operator.post(f"/v1/agents/{agent['id']}/api-keys")).json()["key"]
    response = await operator.get(
        f"/v1/agents/{agent['id']}", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/agent-levels", {"name": "x", "rank": 1, "prices": {"NO-SUCH-SKU": 1}}, "unknown_sku"),
        ("/v1/agent-levels", {"name": "x", "rank": -1}, "invalid_request"),
        ("/v1/agents", {"name": "x", "level_id": 999999999}, "level_not_found"),
        ("/v1/agents", {"name": "x", "level_id": 0}, "invalid_request"),
        ("/v1/agents/999999999/deposits", {"amount": 100}, "agent_not_found"),
        ("/v1/agents/1/deposits", {"amount": 0}, "invalid_request"),
        ("/v1/agents/1/deposits", {"amount": -5}, "invalid_request"),
        ("/v1/agents/1/deposits", {"amount": 1.5}, "invalid_request"),
        ("/v1/agents/999999999/api-keys", None, "agent_not_found"),
    ],
)
async def test_bad_distribution_requests(
    operator: httpx.AsyncClient, path: str, body: object, code: str
) -> None:
    before = (await operator.get("/v1/ledger/trial-balance")).json()
    response = await operator.post(path, json=body)
    assert response.json()["code"] == code, response.text
    assert response.status_code in {404, 422}
    assert (await operator.get("/v1/ledger/trial-balance")).json() == before


async def test_deposits_are_idempotent(operator: httpx.AsyncClient) -> None:
    sku = await _sku(operator)
    level = await _level(operator, sku)
    agent = (await operator.post("/v1/agents", json={"name": "a", "level_id": level["id"]})).json()
    path = f"/v1/agents/{agent['id']}/deposits"
    headers = {"Idempotency-Key": f"dep-{agent['id']}"}

    first = await operator.post(path, json={"amount": 700}, headers=headers)
    replay = await operator.post(path, json={"amount": 700}, headers=headers)
    assert first.status_code == replay.status_code == 201
    assert first.content == replay.content
    assert replay.headers["idempotent-replayed"] == "true"

    conflict = await operator.post(path, json={"amount": 701}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "idempotency_conflict"
    assert (await operator.get(f"/v1/agents/{agent['id']}")).json()["balance"] == 700


async def test_concurrent_requests_with_one_key_run_once(operator: httpx.AsyncClient) -> None:
    sku = await _sku(operator)
    level = await _level(operator, sku)
    agent = (await operator.post("/v1/agents", json={"name": "a", "level_id": level["id"]})).json()
    path = f"/v1/agents/{agent['id']}/deposits"
    headers = {"Idempotency-Key": f"race-{agent['id']}"}
    responses = await asyncio.gather(
        *(operator.post(path, json={"amount": 100}, headers=headers) for _ in range(10))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert (await operator.get(f"/v1/agents/{agent['id']}")).json()["balance"] == 100


async def test_a_failed_request_is_replayed_as_the_same_failure(
    operator: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "create-level-bad-sku"}
    body = {"name": "x", "rank": 1, "prices": {"NOT-THERE": 1}}
    first = await operator.post("/v1/agent-levels", json=body, headers=headers)
    second = await operator.post("/v1/agent-levels", json=body, headers=headers)
    assert first.status_code == second.status_code == 422
    assert first.content == second.content


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tkey", "中文"])
async def test_malformed_idempotency_keys_are_refused(
    operator: httpx.AsyncClient, key: str
) -> None:
    response = await operator.post(
        "/v1/products",
        json={"sku": unique_sku(), "name": "n", "type": "card", "price": 1},
        headers={"Idempotency-Key": key.encode()},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
