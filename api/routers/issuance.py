"""Issuance (agent API key): the hot path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Path, Request, status
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from api.deps import AgentDep, get_agent_direct
from api.idempotency import request_hash_of, request_key
from api.middleware import (
    REQUEST_ID_HEADER,
    BodyTooLarge,
    RequestContext,
    read_body,
    send_whole,
    too_large,
)
from api.schemas import IssuanceCreate, IssuancePublic
from engine.errors import CommonError, DomainError
from engine.issuance.service import Issuance, IssuanceService
from engine.principals import AgentKey

PATH = "/v1/issuances"
router = APIRouter(prefix=PATH, tags=["issuance"])


class _Malformed(StrEnum):
    MALFORMED_REQUEST = "malformed_request"


# The same code the framework-level handler gives any unparsable JSON body.
MALFORMED = _Malformed.MALFORMED_REQUEST

_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/IssuanceCreate"}}
        },
    },
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            "description": "A retry with the same key and body returns the first response.",
        }
    ],
}


def _body(issuance: Issuance, *, created: bool = False) -> bytes:
    document: dict[str, Any] = {
        "id": issuance.public_id,
        "sku": issuance.sku,
        "quantity": issuance.quantity,
        "amount": issuance.amount,
        "currency": issuance.currency,
        "reference": issuance.reference,
        "keys": [{"code": k.code, "expires_at": k.expires_at} for k in issuance.keys],
        "created_at": issuance.created_at,
    }
    # A replayed POST answers exactly what the first one did, even after a refund; the
    # read (the same body as the 201 until then) reports the status now.
    document["status"] = "issued" if created else issuance.status
    return orjson.dumps(document, option=orjson.OPT_UTC_Z)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=IssuancePublic,
    summary="Issue keys, paid from the caller's balance",
    openapi_extra=_CREATE_BODY,
)
async def create(request: Request, agent: AgentDep) -> Response:
    # Documents the endpoint; requests are served by IssuanceHotPath below.
    body = await issue(request, agent, await request.body())
    return Response(body, status_code=201, media_type="application/json")


async def issue(request: Request, agent: AgentKey, raw: bytes) -> bytes:
    """The 201 body of `POST /v1/issuances` with JSON body `raw`, or a DomainError."""
    key = request_key(request, required=True)
    assert key is not None
    try:
        body = IssuanceCreate.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            raise DomainError(MALFORMED, "The request body is not valid JSON.") from None
        fields = [".".join(str(p) for p in e["loc"]) for e in errors]
        raise DomainError(
            CommonError.INVALID_REQUEST,
            f"The request has invalid fields: {', '.join(fields[:10])}.",
            errors=[{"field": f, "message": e["msg"]} for f, e in zip(fields, errors, strict=True)],
        ) from None
    service: IssuanceService = request.app.state.issuance
    issuance = await service.issue(
        agent,
        sku=body.sku,
        quantity=body.quantity,
        reference=body.reference,
        idempotency_key=key,
        request_hash=request_hash_of("POST", PATH, body.model_dump(mode="json")),
    )
    return _body(issuance, created=True)


@router.get("/{issuance_id}", response_model=IssuancePublic, summary="An issuance, for its owner")
async def read(
    issuance_id: Annotated[str, Path(max_length=64)], request: Request, agent: AgentDep
) -> Response:
    service: IssuanceService = request.app.state.issuance
    issuance = await service.reveal(agent.agent_id, issuance_id, agent.owner_label, agent.mode)
    return Response(_body(issuance), media_type="application/json")


class IssuanceHotPath:
    """`POST /v1/issuances` served straight from the server, ahead of FastAPI's stack.

    The busiest request of a sale pays only for its own work: not for the framework's
    middleware (error, telemetry and body-limit layers, ours), routing over dozens of
    path patterns or dependency resolution, which cost about as much Python as the
    issuance itself. What those layers do for it is done here, with the same code: the
    request id, metrics and access log (`RequestContext`), the JSON body limit (413), the
    authentication and the application's exception handlers (problem documents, and the
    500 of an unexpected error). The route object goes in the scope, so logs and metrics
    name the route as before. The tests of the endpoint go through here.
    """

    def __init__(self, app: FastAPI, *, json_limit: int) -> None:
        self._app = app
        self._json_limit = json_limit
        self._route = next(
            route
            for route in router.routes
            if isinstance(route, APIRoute)
            and route.path == PATH
            and "POST" in (route.methods or ())
        )

    @staticmethod
    def serves(scope: Scope) -> bool:
        return bool(scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self._app
        scope["route"] = self._route
        context = RequestContext(scope)
        try:
            await self._serve(scope, receive, send, context)
        finally:
            context.finish()

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        limit = self._json_limit
        try:
            raw = await read_body(scope, receive, limit)
        except BodyTooLarge:
            await too_large(context.sender(send), limit)
            return
        except ClientDisconnect:
            context.status = 499  # nobody to answer; counted as nginx names it
            return
        request = Request(scope, _replay(raw))
        try:
            body = await issue(request, await get_agent_direct(request), raw)
        except Exception as exc:
            handler = _handler_for(self._app, exc)
            if handler is None:  # pragma: no cover - problems.install handles Exception
                raise
            response = await handler(request, exc)
            await response(scope, receive, context.sender(send))
            return
        context.status = 201
        await send_whole(
            send, 201, body, b"application/json", (REQUEST_ID_HEADER, context.encoded_id)
        )


def _replay(raw: bytes) -> Receive:
    """A receive that hands out the body already read (for Request.body, the signature)."""

    async def receive() -> Message:
        return {"type": "http.request", "body": raw, "more_body": False}

    return receive


def _handler_for(app: FastAPI, exc: Exception) -> Callable[..., Awaitable[Response]] | None:
    """The application's exception handler for `exc`, as Starlette would pick it."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler  # type: ignore[return-value]
    return None
