"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.errors import CommonError, DomainError
from engine.principals import AgentKey, Operator, Principal, PrincipalCache
from engine.runtime import Runtime

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
    cache: PrincipalCache = request.app.state.principals
    principal = await cache.authenticate(runtime.db, credentials.credentials)
    if principal is None:
        raise DomainError(CommonError.UNAUTHENTICATED, "The token is not valid.")
    return principal


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
