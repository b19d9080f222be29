"""API keys (operator): rotation with a grace period, revocation, reading a key's state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from api.deps import Cursor, Limit, OperatorDep, RuntimeDep
from api.idempotency import json_response, run_idempotent
from api.schemas import Id, RequestModel
from engine import audit
from engine.distribution import cursors
from engine.distribution.keys import (
    DEFAULT_GRACE_S,
    MAX_GRACE_S,
    ApiKeyState,
    get_key,
    is_active,
    list_keys,
    revoke,
    rotate,
)
from engine.distribution.service import get_agent

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


class ApiKeyRotate(RequestModel):
    grace_s: Annotated[int, Field(ge=0, le=MAX_GRACE_S)] = Field(
        default=DEFAULT_GRACE_S,
        description="How long the old key keeps working beside its successor (0: stops now).",
    )


class ApiKeyStatePublic(BaseModel):
    id: int
    agent_id: int
    mode: str
    prefix: str
    require_signature: bool
    rate_limit_per_s: int | None
    active: bool
    created_at: datetime
    expires_at: datetime | None = Field(description="A rotated key stops working at this time.")
    revoked_at: datetime | None
    rotated_from: int | None = Field(description="The key this one replaced.")


class ApiKeyRotated(BaseModel):
    id: int
    key: str = Field(description="The successor's secret, shown once; only its hash is stored.")
    mode: str
    prefix: str
    require_signature: bool
    rate_limit_per_s: int | None
    rotated_from: int
    previous_expires_at: datetime = Field(description="When the old key stops working.")
    signing_secret: str | None = Field(
        default=None,
        description="Only if the old signing secret could not be carried over: a new one, "
        "shown once. Otherwise the successor signs with the old key's secret.",
    )


class ApiKeyList(BaseModel):
    data: list[ApiKeyStatePublic]
    next_cursor: str | None


def _state(key: ApiKeyState) -> dict[str, Any]:
    return ApiKeyStatePublic(**vars(key), active=is_active(key, datetime.now(UTC))).model_dump(
        mode="json"
    )


@router.get(
    "",
    response_model=ApiKeyList,
    summary="An agent's API keys (never their secrets), oldest first",
)
async def list_agent_keys(
    runtime: RuntimeDep,
    _operator: OperatorDep,
    agent_id: Annotated[int, Query(ge=1, le=2**63 - 1)],
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    after = cursors.decode("keys", cursor)
    async with runtime.db.acquire() as conn:
        await get_agent(conn, agent_id)
        keys = await list_keys(conn, agent_id, limit=limit + 1, after=after)
    page = keys[:limit]
    next_cursor = cursors.encode("keys", page[-1].id) if len(keys) > limit else None
    return json_response(200, {"data": [_state(k) for k in page], "next_cursor": next_cursor})


@router.get("/{key_id}", response_model=ApiKeyStatePublic, summary="An API key's state")
async def read_key(key_id: Id, runtime: RuntimeDep, _operator: OperatorDep) -> Response:
    return json_response(200, _state(await get_key(runtime.db, key_id)))


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    response_model=ApiKeyRotated,
    summary="Rotate an API key: a successor now, the old key valid for a grace period",
    description="At most two keys of a rotation chain are active: a key whose predecessor "
    "is still in its grace period is `409 rotation_in_progress`.",
)
async def rotate_key(
    key_id: Id,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
    body: ApiKeyRotate | None = None,
) -> Response:
    options = body or ApiKeyRotate()

    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            rotation = await rotate(
                conn,
                request.app.state.keyring.cipher,
                key_id,
                grace_s=options.grace_s,
                now=datetime.now(UTC),
            )
            await audit.record(
                conn,
                operator.owner_label,
                "api_key.rotated",
                f"agent:{rotation.old.agent_id}",
                {
                    "key_id": key_id,
                    "successor_id": rotation.new.id,
                    "prefix": rotation.new.prefix,
                    "grace_s": options.grace_s,
                },
            )
        assert rotation.old.expires_at is not None
        created = ApiKeyRotated(
            id=rotation.new.id,
            key=rotation.key,
            mode=rotation.new.mode,
            prefix=rotation.new.prefix,
            require_signature=rotation.new.require_signature,
            rate_limit_per_s=rotation.new.rate_limit_per_s,
            rotated_from=key_id,
            previous_expires_at=rotation.old.expires_at,
            signing_secret=rotation.signing_secret,
        )
        return json_response(201, created.model_dump(mode="json"))

    response = await run_idempotent(
        request, runtime, operator.owner_label, {"rotate": key_id, **options.model_dump()}, run
    )
    # This worker sees the old key's expiry at once; the others within the cache TTL,
    # which the default grace period dwarfs.
    request.app.state.principals.forget_key(key_id)
    return response


async def _revoke(
    key_id: int, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            key = await revoke(conn, key_id, now=datetime.now(UTC))
            await audit.record(
                conn,
                operator.owner_label,
                "api_key.revoked",
                f"agent:{key.agent_id}",
                {"key_id": key_id, "prefix": key.prefix},
            )
        return json_response(200, _state(key))

    response = await run_idempotent(request, runtime, operator.owner_label, {"revoke": key_id}, run)
    # Refused here from the next request; in the other workers within the cache TTL.
    request.app.state.principals.forget_key(key_id)
    return response


@router.delete(
    "/{key_id}",
    response_model=ApiKeyStatePublic,
    summary="Revoke an API key now (every worker within seconds)",
)
async def delete_key(
    key_id: Id, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    return await _revoke(key_id, request, runtime, operator)


@router.post(
    "/{key_id}/revoke",
    response_model=ApiKeyStatePublic,
    summary="Revoke an API key now (the same as DELETE)",
)
async def revoke_key(
    key_id: Id, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    return await _revoke(key_id, request, runtime, operator)
