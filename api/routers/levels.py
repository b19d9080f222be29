"""Agent levels in depth (operator), the agent tree and price lists (agent-facing)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import StringConstraints
from starlette.responses import Response

from api.deps import AgentDep, Cursor, Limit, OperatorDep, RuntimeDep
from api.idempotency import json_response, run_idempotent
from api.schemas import Id
from api.schemas_levels import (
    AgentLevelDetail,
    AgentLevelPage,
    AgentLevelUpdate,
    LevelChangeCreate,
    LevelChangePage,
    LevelChangePublic,
    PriceListPage,
    SubAgentCreate,
    SubAgentCreated,
    SubAgentPage,
    SubAgentPricesUpdate,
    SubAgentPublic,
)
from engine import audit
from engine.distribution.admin import require_live
from engine.distribution.levels import (
    LevelChanges,
    LevelDetail,
    RuleMetric,
    UpgradeRule,
    list_levels,
    price_list,
    update_level,
)
from engine.distribution.portal import SalesTotals, sales_totals
from engine.distribution.sub_agents import (
    SubAgent,
    create_sub_agent,
    list_sub_agents,
    set_child_prices,
)
from engine.distribution.upgrades import LevelChange, change_level, list_changes
from engine.errors import CommonError, DomainError
from engine.notify.outbox import decode_cursor, encode_cursor
from engine.pricing import Tier
from engine.runtime import Runtime
from engine.storage.db import Connection

router = APIRouter(prefix="/v1", tags=["distribution"])


def level_body(level: LevelDetail) -> dict[str, Any]:
    return AgentLevelDetail.model_validate(asdict(level)).model_dump(mode="json")


def _change_body(change: LevelChange) -> dict[str, Any]:
    return LevelChangePublic.model_validate(asdict(change)).model_dump(mode="json")


def _sub_agent_body(sub: SubAgent, totals: SalesTotals | None = None) -> dict[str, Any]:
    return SubAgentPublic(
        **vars(sub.agent), prices=sub.prices, **vars(totals or SalesTotals())
    ).model_dump(mode="json")


def _forget_prices(request: Request) -> None:
    # This worker prices with the change at once; the others within the terms TTL (2 s).
    request.app.state.issuance.terms.clear()


async def _write(
    request: Request,
    runtime: Runtime,
    owner: str,
    *,
    action: str,
    payload: object,
    status_code: int,
    work: Callable[[Connection], Awaitable[tuple[dict[str, Any], str, dict[str, Any] | None]]],
) -> Response:
    """An idempotent write by `owner` (an operator or an agent) and its audit record, in
    one transaction."""

    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            body, subject, detail = await work(conn)
            await audit.record(conn, owner, action, subject, detail)
        return json_response(status_code, body)

    return await run_idempotent(request, runtime, owner, payload, run)


# --- operator: levels ------------------------------------------------------------------


@router.get(
    "/agent-levels",
    response_model=AgentLevelPage,
    summary="Agent levels with their prices, tiers and rules, oldest first",
)
async def list_agent_levels(
    runtime: RuntimeDep, _operator: OperatorDep, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    after = decode_cursor(cursor) if cursor else None
    found = await list_levels(runtime.db, limit=limit + 1, after_id=after)
    page = found[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(found) > limit else None
    return json_response(200, {"data": [level_body(v) for v in page], "next_cursor": next_cursor})


@router.patch(
    "/agent-levels/{level_id}",
    response_model=AgentLevelDetail,
    summary="Change an agent level: prices, discount, tiers, visible SKUs, rules",
    description="Only the fields sent change. Refused, changing nothing, when a price "
    "would fall below the platform's cost basis (`price_below_cost_basis`) or tiers are "
    "out of order (`tiers_out_of_order`).",
)
async def patch_agent_level(
    level_id: Id,
    body: AgentLevelUpdate,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    given = body.model_fields_set
    changes = LevelChanges(
        fields=frozenset(given),
        name=body.name,
        rank=body.rank,
        prices=body.prices or {},
        discount_bp=body.discount_bp,
        tiers={
            sku: [Tier(t.min_quantity, t.unit_price) for t in tiers]
            for sku, tiers in (body.tiers or {}).items()
        },
        visible_skus=body.visible_skus,
        can_create_sub_agents=body.can_create_sub_agents,
        auto_downgrade=body.auto_downgrade,
        upgrade_rules=[
            UpgradeRule(RuleMetric(r.metric), r.threshold, r.window_days, r.to_level_id)
            for r in body.upgrade_rules or []
        ],
    )
    payload = {"level_id": level_id, **body.model_dump(mode="json", exclude_unset=True)}

    async def work(conn: Connection) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
        level = await update_level(conn, level_id, changes)
        return level_body(level), f"agent_level:{level_id}", payload

    response = await _write(
        request,
        runtime,
        operator.owner_label,
        action="agent_level.updated",
        payload=payload,
        status_code=200,
        work=work,
    )
    _forget_prices(request)
    return response


# --- operator: an agent's level ----------------------------------------------------------


@router.post(
    "/agents/{agent_id}/level-changes",
    status_code=status.HTTP_201_CREATED,
    response_model=LevelChangePublic,
    summary="Move an agent to another level by hand (recorded with its reason)",
)
async def create_level_change(
    agent_id: Id,
    body: LevelChangeCreate,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            change = await change_level(
                conn, agent_id, body.level_id, actor=operator.owner_label, reason=body.reason
            )
        return json_response(201, _change_body(change))

    response = await run_idempotent(
        request,
        runtime,
        operator.owner_label,
        {"agent_id": agent_id, **body.model_dump(mode="json")},
        run,
    )
    # The agent's cached principal carries its level.
    request.app.state.principals.clear()
    return response


@router.get(
    "/agents/{agent_id}/level-changes",
    response_model=LevelChangePage,
    summary="An agent's level changes, automatic and manual, newest first",
)
async def list_level_changes(
    agent_id: Id,
    runtime: RuntimeDep,
    _operator: OperatorDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    before = decode_cursor(cursor) if cursor else None
    found = await list_changes(runtime.db, agent_id, limit=limit + 1, before_id=before)
    page = found[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(found) > limit else None
    return json_response(200, {"data": [_change_body(c) for c in page], "next_cursor": next_cursor})


# --- agent-facing ------------------------------------------------------------------------


def _encode_sku_cursor(sku: str) -> str:
    return base64.urlsafe_b64encode(f"sku:{sku}".encode()).decode().rstrip("=")


def _decode_sku_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    prefix, _, sku = raw.partition(":")
    if prefix != "sku" or not sku:
        raise DomainError(CommonError.INVALID_REQUEST, "The cursor is not one we issued.")
    return sku


@router.get(
    "/me/prices",
    response_model=PriceListPage,
    summary="My price list: the SKUs I may buy, at my prices, with my quantity tiers",
)
async def my_prices(
    runtime: RuntimeDep,
    agent: AgentDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    sku: Annotated[
        list[Annotated[str, StringConstraints(max_length=64)]] | None,
        Query(max_length=100, description="Only these SKUs (repeat the parameter)"),
    ] = None,
) -> Response:
    after = _decode_sku_cursor(cursor) if cursor else None
    found = await price_list(runtime.db, agent.agent_id, limit=limit + 1, after_sku=after, skus=sku)
    page = found[:limit]
    next_cursor = _encode_sku_cursor(page[-1].sku) if len(found) > limit else None
    return json_response(200, {"data": [asdict(item) for item in page], "next_cursor": next_cursor})


@router.post(
    "/me/sub-agents",
    status_code=status.HTTP_201_CREATED,
    response_model=SubAgentCreated,
    summary="Create a sub-agent at a lower level, with its prices and an API key",
    description="Needs a level with `can_create_sub_agents` and a live key (a test key: "
    "`403 live_key_required`). The API key is shown once.",
)
async def create_my_sub_agent(
    body: SubAgentCreate, request: Request, runtime: RuntimeDep, agent: AgentDep
) -> Response:
    require_live(agent.mode)

    async def work(conn: Connection) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
        created = await create_sub_agent(
            conn,
            agent.agent_id,
            name=body.name,
            level_id=body.level_id,
            prices=body.prices,
            max_depth=runtime.settings.agent_max_depth,
        )
        sub = created.sub_agent
        public = SubAgentCreated(
            **vars(sub.agent),
            prices=sub.prices,
            api_key={
                "id": created.api_key_id,
                "key": created.api_key,
                "prefix": created.api_key_prefix,
            },
        )
        # The audit keeps the key's prefix, never the key.
        detail = {
            "parent_id": agent.agent_id,
            "level_id": body.level_id,
            "prices": sub.prices,
            "api_key_prefix": created.api_key_prefix,
        }
        return public.model_dump(mode="json"), f"agent:{sub.agent.id}", detail

    return await _write(
        request,
        runtime,
        agent.owner_label,
        action="sub_agent.created",
        payload=body.model_dump(mode="json"),
        status_code=201,
        work=work,
    )


@router.get(
    "/me/sub-agents",
    response_model=SubAgentPage,
    summary="My sub-agents, the prices I set for them and their sales totals",
    description="With a test key, their test balances and sandbox sales.",
)
async def my_sub_agents(
    runtime: RuntimeDep, agent: AgentDep, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    after = decode_cursor(cursor) if cursor else None
    found = await list_sub_agents(runtime.db, agent.agent_id, limit=limit + 1, after_id=after)
    page = found[:limit]
    next_cursor = encode_cursor(page[-1].agent.id) if len(found) > limit else None
    totals = await sales_totals(runtime.db, [s.agent.id for s in page], agent.mode)
    if agent.mode != "live":
        page = [replace(s, agent=replace(s.agent, balance=s.agent.test_balance)) for s in page]
    data = [_sub_agent_body(s, totals.get(s.agent.id)) for s in page]
    return json_response(200, {"data": data, "next_cursor": next_cursor})


@router.put(
    "/me/sub-agents/{agent_id}/prices",
    response_model=SubAgentPublic,
    summary="Set what one of my sub-agents pays me per SKU (replaces every price)",
    description="Each price at least your own cost (`price_below_cost`) and the platform's "
    "cost basis (`price_below_cost_basis`). Needs a live key (`403 live_key_required`).",
)
async def set_my_sub_agent_prices(
    agent_id: Id,
    body: SubAgentPricesUpdate,
    request: Request,
    runtime: RuntimeDep,
    agent: AgentDep,
) -> Response:
    require_live(agent.mode)

    async def work(conn: Connection) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
        sub = await set_child_prices(conn, agent.agent_id, agent_id, body.prices)
        return _sub_agent_body(sub), f"agent:{agent_id}", {"prices": sub.prices}

    response = await _write(
        request,
        runtime,
        agent.owner_label,
        action="sub_agent.prices_set",
        payload={"agent_id": agent_id, **body.model_dump(mode="json")},
        status_code=200,
        work=work,
    )
    _forget_prices(request)
    return response
