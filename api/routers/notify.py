"""Notifications (operator): webhook endpoints and the outbox (dead letters, retries)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StringConstraints
from starlette.responses import Response

from api.deps import Cursor, Limit, OperatorDep, RuntimeDep
from api.idempotency import Written, json_response, operator_write, run_idempotent
from api.schemas import Id, RequestModel
from engine import audit
from engine.notify.outbox import (
    OutboxMessage,
    WebhookEndpoint,
    create_endpoint,
    decode_cursor,
    disable_endpoint,
    encode_cursor,
    list_endpoints,
    list_messages,
    retry_message,
)
from engine.principals import Operator
from engine.runtime import Runtime
from engine.storage.db import Connection

router = APIRouter(prefix="/v1", tags=["notify"])

# This area's codes, in the one table the problem handler reads.

# The URL is checked in engine (so the code is `invalid_webhook_url`, not a generic 422);
# the schema only bounds its size.
Url = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
EventType = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Description = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
]


class WebhookEndpointCreate(RequestModel):
    url: Url
    event_types: Annotated[list[EventType], Field(max_length=50)] | None = None
    agent_id: Id | None = None
    description: Description | None = None


class WebhookEndpointPublic(BaseModel):
    id: int
    url: str
    event_types: list[str] | None
    agent_id: int | None
    description: str | None
    enabled: bool
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpointPublic):
    secret: str = Field(
        description="The Standard Webhooks signing secret (whsec_…). Shown only here."
    )


class WebhookEndpointPage(BaseModel):
    data: list[WebhookEndpointPublic]
    next_cursor: str | None


class OutboxMessagePublic(BaseModel):
    id: int
    kind: Literal["email", "webhook"]
    destination: str = Field(description="The endpoint id of a webhook, the address of an email.")
    topic: str = Field(description="The event type of a webhook, the template of an email.")
    locale: str | None
    message_id: str = Field(description="webhook-id / Message-ID, the same on every attempt.")
    status: Literal["pending", "sending", "sent", "dead"]
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


class OutboxPage(BaseModel):
    data: list[OutboxMessagePublic]
    next_cursor: str | None


def _endpoint(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return WebhookEndpointPublic(**vars(endpoint)).model_dump(mode="json")


def _message(message: OutboxMessage) -> dict[str, Any]:
    return OutboxMessagePublic(**vars(message)).model_dump(mode="json")


async def _operator_change(
    request: Request,
    runtime: Runtime,
    operator: Operator,
    *,
    action: str,
    payload: object,
    work: Callable[[Connection], Awaitable[Written]],
) -> Response:
    """Like `operator_write`, answering 200: these change an existing resource."""

    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            body, subject, detail = await work(conn)
            await audit.record(conn, operator.owner_label, action, subject, detail)
        return json_response(200, body)

    return await run_idempotent(request, runtime, operator.owner_label, payload, run)


@router.post(
    "/webhook-endpoints",
    status_code=201,
    response_model=WebhookEndpointCreated,
    summary="Register a webhook endpoint (its signing secret is shown once)",
)
async def create(
    body: WebhookEndpointCreate, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    async def work(conn: Connection) -> Written:
        endpoint, secret = await create_endpoint(
            conn,
            body.url,
            event_types=body.event_types,
            agent_id=body.agent_id,
            description=body.description,
        )
        created = WebhookEndpointCreated(**vars(endpoint), secret=secret)
        # The audit names the endpoint, never the secret; the URL stays out too, since
        # receivers sometimes put a token in it.
        detail = {"agent_id": endpoint.agent_id, "event_types": endpoint.event_types}
        return created.model_dump(mode="json"), f"webhook_endpoint:{endpoint.id}", detail

    return await operator_write(
        request,
        runtime,
        operator,
        action="webhook_endpoint.created",
        payload=body.model_dump(mode="json"),
        work=work,
    )


@router.get(
    "/webhook-endpoints",
    response_model=WebhookEndpointPage,
    summary="Webhook endpoints, oldest first (secrets are never listed)",
)
async def list_all(
    runtime: RuntimeDep, _operator: OperatorDep, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    after = decode_cursor(cursor) if cursor else None
    # One more than asked tells whether there is a next page without a count query.
    found = await list_endpoints(runtime.db, limit=limit + 1, after_id=after)
    page = found[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(found) > limit else None
    return json_response(200, {"data": [_endpoint(e) for e in page], "next_cursor": next_cursor})


@router.delete(
    "/webhook-endpoints/{endpoint_id}",
    response_model=WebhookEndpointPublic,
    summary="Disable a webhook endpoint (kept for the history of its messages)",
)
async def disable(
    endpoint_id: Id, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    async def work(conn: Connection) -> Written:
        endpoint = await disable_endpoint(conn, endpoint_id)
        return _endpoint(endpoint), f"webhook_endpoint:{endpoint_id}", None

    return await _operator_change(
        request,
        runtime,
        operator,
        action="webhook_endpoint.disabled",
        payload={"endpoint_id": endpoint_id},
        work=work,
    )


@router.get(
    "/outbox",
    response_model=OutboxPage,
    summary="Outgoing emails and webhooks, newest first (payloads are not shown)",
)
async def list_outbox(
    runtime: RuntimeDep,
    _operator: OperatorDep,
    status: Literal["pending", "sending", "sent", "dead"] | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    before = decode_cursor(cursor) if cursor else None
    found = await list_messages(runtime.db, status=status, limit=limit + 1, before_id=before)
    page = found[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(found) > limit else None
    return json_response(200, {"data": [_message(m) for m in page], "next_cursor": next_cursor})


@router.post(
    "/outbox/{outbox_id}/retry",
    response_model=OutboxMessagePublic,
    summary="Send a dead message again (from a fresh count of attempts)",
)
async def retry(
    outbox_id: Id, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    async def work(conn: Connection) -> Written:
        message = await retry_message(conn, outbox_id)
        return _message(message), f"outbox:{outbox_id}", {"kind": message.kind}

    return await _operator_change(
        request,
        runtime,
        operator,
        action="outbox.retried",
        payload={"outbox_id": outbox_id},
        work=work,
    )
