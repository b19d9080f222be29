"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.errors import CommonError, DomainError
from engine.principals import AgentKey, Operator, Principal, PrincipalCache
from engine.ratelimit import RateLimiter
from engine.runtime import Runtime
from engine.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, remember, verify

# Every list: `?limit=` (default 50, max 500) and the opaque `?cursor=` of the page before.
Limit = Annotated[int, Query(ge=1, le=500, description="Page size (default 50, max 500)")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page")
]

_bearer = HTTPBearer(auto_error=False, description="An operator token or an agent API key")


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_principal(
    request: Request,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise DomainError(CommonError.UNAUTHENTICATED, "Send Authorization: Bearer <token>.")
    return await authenticate(request, runtime, credentials.credentials)


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, read as `HTTPBearer` reads it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token


async def get_agent_direct(request: Request) -> AgentKey:
    """`AgentDep` without FastAPI's dependency resolution, for the issuance fast path."""
    token = bearer_token(request)
    if token is None:
        raise DomainError(CommonError.UNAUTHENTICATED, "Send Authorization: Bearer <token>.")
    principal = await authenticate(request, request.app.state.runtime, token)
    return await get_agent(principal)


async def authenticate(request: Request, runtime: Runtime, token: str) -> Principal:
    cache: PrincipalCache = request.app.state.principals
    keyring = getattr(request.app.state, "keyring", None)
    principal = await cache.authenticate(
        runtime.db, token, keyring.cipher if keyring is not None else None
    )
    if principal is None:
        raise DomainError(CommonError.UNAUTHENTICATED, "The token is not valid.")
    if isinstance(principal, AgentKey):
        limit = principal.rate_limit_per_s
        if limit is None:
            limit = runtime.settings.api_key_rate_limit_per_s
        # Before the signature: refused requests of a flooding client cost one round trip.
        if limit:
            limiter: RateLimiter = request.app.state.rate_limiter
            await limiter.check(principal.key_id, limit)
        # One attribute test: keys that do not sign pay nothing more on the hot path.
        if principal.require_signature:
            await _check_signature(request, runtime, principal)
    return principal


async def _check_signature(request: Request, runtime: Runtime, key: AgentKey) -> None:
    signature = verify(
        key.signing_secret,
        method=request.method,
        target=_request_target(request),
        timestamp=request.headers.get(TIMESTAMP_HEADER),
        signature=request.headers.get(SIGNATURE_HEADER),
        # Starlette keeps the body, so the route reads the same bytes again for free.
        body=await request.body(),
        now=time.time(),
    )
    await remember(runtime.redis, runtime.settings.redis_namespace, key.key_id, signature)


def _request_target(request: Request) -> str:
    """The path as sent on the request line (percent-encoding untouched) and the raw query.

    Servers disagree on whether `raw_path` carries the query (httpx's ASGI transport puts
    it there, uvicorn does not), so it is cut off and `query_string` used for both.
    """
    raw_path: bytes | None = request.scope.get("raw_path")
    path = raw_path.split(b"?", 1)[0].decode("latin-1") if raw_path else request.url.path
    query: bytes = request.scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_operator(principal: PrincipalDep) -> Operator:
    if not isinstance(principal, Operator):
        raise DomainError(CommonError.FORBIDDEN, "This needs an operator token.")
    return principal


async def get_agent(principal: PrincipalDep) -> AgentKey:
    if not isinstance(principal, AgentKey):
        raise DomainError(CommonError.FORBIDDEN, "This needs an agent API key.")
    return principal


OperatorDep = Annotated[Operator, Depends(get_operator)]
AgentDep = Annotated[AgentKey, Depends(get_agent)]
