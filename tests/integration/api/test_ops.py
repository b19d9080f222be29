from __future__ import annotations

import gc

import httpx
import pytest

from api.app import create_app
from engine.settings import Settings

PROBLEM = "application/problem+json"


async def test_livez(client: httpx.AsyncClient) -> None:
    response = await client.get("/livez")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_a_started_worker_keeps_its_own_objects_out_of_garbage_collection(
    settings: Settings,
) -> None:
    # A full collection would otherwise walk every module, route and model of the worker
    # with the event loop stopped; at shutdown they are handed back to the collector.
    app = create_app(settings)
    before = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > max(before, 10_000)
    assert gc.get_freeze_count() == 0


async def test_readyz_reports_both_stores(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"postgres": "ok", "redis": "ok"}


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/livez")
    await client.get("/no/such/thing")
    text = (await client.get("/metrics")).text
    assert 'kami_http_requests_total{method="GET",route="/livez",status="200"}' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "kami_http_request_duration_seconds_bucket" in text
    assert "process_cpu_seconds_total" in text


async def test_metrics_time_the_garbage_collectors_pauses(client: httpx.AsyncClient) -> None:
    def full_collections(text: str) -> float:
        prefix = 'kami_gc_pause_seconds_count{generation="2"} '
        [line] = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(line.removeprefix(prefix))

    before = full_collections((await client.get("/metrics")).text)
    gc.collect()
    gc.collect()
    assert full_collections((await client.get("/metrics")).text) >= before + 2


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert schema["info"]["title"] == "Kami"
    assert "/readyz" in schema["paths"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def _assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["type"], str)
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    return body


async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    _assert_problem(await client.get("/v1/nothing-here"), 404, "not_found")


async def test_wrong_method_is_a_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.post("/livez")
    _assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"


async def test_request_id_is_generated_and_propagated(client: httpx.AsyncClient) -> None:
    generated = await client.get("/livez")
    assert len(generated.headers["x-request-id"]) == 32
    echoed = await client.get("/livez", headers={"X-Request-Id": "storefront-abc.123"})
    assert echoed.headers["x-request-id"] == "storefront-abc.123"
    problem = await client.get("/missing", headers={"X-Request-Id": "trace-404"})
    assert problem.headers["x-request-id"] == "trace-404"


@pytest.mark.parametrize("bad", ["has space", "x" * 200, "semi;colon"])
async def test_unsafe_request_ids_are_replaced(client: httpx.AsyncClient, bad: str) -> None:
    response = await client.get("/livez", headers={"X-Request-Id": bad})
    assert response.headers["x-request-id"] != bad
    assert len(response.headers["x-request-id"]) == 32
