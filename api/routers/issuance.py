"""Issuance (agent API key): the hot path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Path, Request, status
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import AgentDep, get_agent_direct
from api.idempotency import request_hash, request_key
from api.schemas import IssuanceCreate, IssuancePublic
from engine.errors import CommonError, DomainError
from engine.issuance.service import Issuance, IssuanceService

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
    key = request_key(request, required=True)
    assert key is not None
    try:
        body = IssuanceCreate.model_validate_json(await request.body())
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
        request_hash=request_hash(request, body.model_dump(mode="json")),
    )
    return Response(_body(issuance, created=True), status_code=201, media_type="application/json")


@router.get("/{issuance_id}", response_model=IssuancePublic, summary="An issuance, for its owner")
async def read(
    issuance_id: Annotated[str, Path(max_length=64)], request: Request, agent: AgentDep
) -> Response:
    service: IssuanceService = request.app.state.issuance
    issuance = await service.reveal(agent.agent_id, issuance_id, agent.owner_label, agent.mode)
    return Response(_body(issuance), media_type="application/json")


class IssuanceFastPath:
    """`POST /v1/issuances` without FastAPI's route matching (dozens of path patterns) and
    dependency resolution: the busiest request of a sale pays only for its own work.

    The same handler, the same authentication and the same exception handlers run as on
    the routed path (the tests of the endpoint go through here), and the route object is
    put in the scope, so logs and metrics name it as before. Installed innermost of the
    application's middleware, so body limits, request ids and metrics still apply.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._route = next(
            route
            for route in router.routes
            if isinstance(route, APIRoute)
            and route.path == PATH
            and "POST" in (route.methods or ())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        fastapi_app: FastAPI = scope["app"]
        scope["route"] = self._route
        request = Request(scope, receive)
        try:
            response = await create(request, await get_agent_direct(request))
        except Exception as exc:
            handler = _handler_for(fastapi_app, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _handler_for(app: FastAPI, exc: Exception) -> Callable[..., Awaitable[Response]] | None:
    """The application's exception handler for `exc`, as Starlette would pick it."""
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler  # type: ignore[return-value]
    return None
