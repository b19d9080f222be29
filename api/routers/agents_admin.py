"""Operator management of agents: the list, changes to one agent, and the views an agent
has of itself (`/v1/me/...`) for any agent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from api.deps import Cursor, Limit, OperatorDep, RuntimeDep
from api.idempotency import json_response, run_idempotent
from api.routers.levels import _sub_agent_body
from api.routers.me_finance import issuance_page, order_page
from api.schemas import AgentPublic, Id, Money, Name, RequestModel
from api.schemas_finance import MyIssuancePage, MyOrderPage
from api.schemas_levels import SubAgentPage
from engine import audit
from engine.distribution import admin as agents
from engine.distribution import cursors, portal
from engine.distribution.service import Agent
from engine.distribution.sub_agents import list_sub_agents
from engine.ledger import statements

router = APIRouter(prefix="/v1/agents", tags=["distribution"])

Mode = Annotated[
    Literal["live", "test"], Query(description="Which of the agent's books: live or sandbox")
]


class AgentPage(BaseModel):
    data: list[AgentPublic]
    next_cursor: str | None = None


class AgentUpdate(RequestModel):
    name: Name | None = Field(default=None, description="Omitted: unchanged.")
    credit_limit: Money | None = Field(
        default=None, description="How far below zero the balance may go. Omitted: unchanged."
    )
    status: Literal["active", "suspended"] | None = Field(
        default=None,
        description="`suspended`: every API key of the agent is refused (`401`) within "
        "seconds in every worker; `active` lets them in again. Omitted: unchanged.",
    )


def _agent(agent: Agent) -> dict[str, Any]:
    return AgentPublic(**vars(agent)).model_dump(mode="json")


@router.get("", response_model=AgentPage, summary="Agents, oldest first, with their balances")
async def list_all(
    runtime: RuntimeDep,
    _operator: OperatorDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    parent_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    level_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    status: Literal["active", "suspended"] | None = None,
) -> Response:
    found = await agents.list_agents(
        runtime.db,
        limit=limit + 1,
        after_id=cursors.decode("agt", cursor),
        parent_id=parent_id,
        level_id=level_id,
        status=agents.AgentStatus(status) if status is not None else None,
    )
    page = found[:limit]
    next_cursor = cursors.encode("agt", page[-1].id) if len(found) > limit else None
    return json_response(200, {"data": [_agent(a) for a in page], "next_cursor": next_cursor})


@router.patch(
    "/{agent_id}",
    response_model=AgentPublic,
    summary="Change an agent: name, credit limit, status (active or suspended)",
    description="A request that changes nothing is `409 agent_unchanged`. The audit record "
    "(`agent.updated`) holds each changed field's old and new value.",
)
async def update(
    agent_id: Id,
    body: AgentUpdate,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    change = agents.AgentUpdate(
        name=body.name,
        credit_limit=body.credit_limit,
        status=agents.AgentStatus(body.status) if body.status is not None else None,
    )

    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            updated = await agents.update_agent(conn, agent_id, change)
            await audit.record(
                conn,
                operator.owner_label,
                "agent.updated",
                f"agent:{agent_id}",
                {"changes": updated.changes},
            )
        return json_response(200, _agent(updated.agent))

    response = await run_idempotent(
        request,
        runtime,
        operator.owner_label,
        {"agent_id": agent_id, **body.model_dump(mode="json", exclude_unset=True)},
        run,
    )
    # This worker applies a suspension (and a new credit limit) at once; the others when
    # their cached key (10 s) and funds (1 s) expire.
    request.app.state.principals.forget_agent(agent_id)
    request.app.state.issuance.balances.forget(agent_id)
    return response


@router.get(
    "/{agent_id}/issuances",
    response_model=MyIssuancePage,
    summary="An agent's issuances of one mode, newest first (no keys)",
)
async def agent_issuances(
    agent_id: Id,
    runtime: RuntimeDep,
    _operator: OperatorDep,
    mode: Mode = "live",
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    before = statements.decode_cursor(cursor, "iss", 1)[0] if cursor else None
    await agents.require_agent(runtime.db, agent_id)
    found = await portal.issuances(
        runtime.db, agent_id, limit=limit + 1, before_id=before, mode=mode
    )
    return issuance_page(found, limit)


@router.get(
    "/{agent_id}/orders",
    response_model=MyOrderPage,
    summary="An agent's sub-store orders of one mode, newest first (no contact, no keys)",
)
async def agent_orders(
    agent_id: Id,
    runtime: RuntimeDep,
    _operator: OperatorDep,
    mode: Mode = "live",
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    before = statements.decode_cursor(cursor, "ord", 1)[0] if cursor else None
    await agents.require_agent(runtime.db, agent_id)
    found = await portal.orders(runtime.db, agent_id, limit=limit + 1, before_id=before, mode=mode)
    return order_page(found, limit)


@router.get(
    "/{agent_id}/sub-agents",
    response_model=SubAgentPage,
    summary="An agent's direct sub-agents, the prices it set for them and their live sales",
)
async def agent_sub_agents(
    agent_id: Id,
    runtime: RuntimeDep,
    _operator: OperatorDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    after = cursors.decode("sub", cursor)
    await agents.require_agent(runtime.db, agent_id)
    found = await list_sub_agents(runtime.db, agent_id, limit=limit + 1, after_id=after)
    page = found[:limit]
    next_cursor = cursors.encode("sub", page[-1].agent.id) if len(found) > limit else None
    totals = await portal.sales_totals(runtime.db, [s.agent.id for s in page])
    data = [_sub_agent_body(s, totals.get(s.agent.id)) for s in page]
    return json_response(200, {"data": data, "next_cursor": next_cursor})
