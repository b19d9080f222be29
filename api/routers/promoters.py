"""Promoters (推广员): operator endpoints, and the promoter's own view with its API key."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field
from starlette.responses import Response

from api.deps import AgentDep, Cursor, Limit, OperatorDep, RuntimeDep
from api.idempotency import Written, json_response, operator_write, run_idempotent
from api.schemas import Id, RequestModel
from engine import audit
from engine.distribution.commissions import BASIS_POINTS
from engine.distribution.promoters import (
    AttributedOrder,
    Earnings,
    Promoter,
    attributed_orders,
    create_promoter,
    earnings,
    get_promoter,
    update_promoter,
)
from engine.storage.db import Connection

router = APIRouter(prefix="/v1", tags=["promoters"])


class PromoterCreate(RequestModel):
    agent_id: Id = Field(description="The agent that is the promoter; paid into its balance.")
    code: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{4,32}$",
        description="The link code buyers' orders carry as `promoter`; generated if omitted.",
    )
    rate_bp: Annotated[int, Field(ge=0, le=BASIS_POINTS)] | None = Field(
        default=None, description="Commission in basis points of the sale amount."
    )
    per_unit: Annotated[int, Field(ge=0, le=10**12)] | None = Field(
        default=None, description="Commission per unit sold, in minor units."
    )
    store_agent_id: Id | None = Field(
        default=None,
        description="Only that store's orders count (it pays from its margin); null: any order.",
    )


class PromoterUpdate(RequestModel):
    status: Literal["active", "inactive"] | None = Field(
        default=None, description="inactive: its code is refused on new orders."
    )
    rate_bp: Annotated[int, Field(ge=0, le=BASIS_POINTS)] | None = Field(
        default=None, description="A new rate; replaces a fixed amount per unit."
    )
    per_unit: Annotated[int, Field(ge=0, le=10**12)] | None = Field(
        default=None, description="A new amount per unit; replaces a rate."
    )


class EarningsPublic(BaseModel):
    earned: int
    pending: int
    reversed: int
    orders: int


class PromoterPublic(BaseModel):
    agent_id: int
    code: str
    rate_bp: int | None
    per_unit: int | None
    store_agent_id: int | None
    status: str
    created_at: datetime


class PromotionsPublic(PromoterPublic):
    earnings: EarningsPublic


class AttributedOrderPublic(BaseModel):
    order_no: str
    status: str
    sku: str
    quantity: int
    amount: int
    currency: str
    commission: int
    store_agent_id: int | None
    mode: str = Field(description="test: placed with a test key, paid in the sandbox.")
    created_at: datetime


class AttributedOrderList(BaseModel):
    data: list[AttributedOrderPublic]
    next_cursor: str | None


def _promoter(promoter: Promoter) -> dict[str, Any]:
    return PromoterPublic(**vars(promoter)).model_dump(mode="json")


def _promotions(promoter: Promoter, totals: Earnings) -> dict[str, Any]:
    return PromotionsPublic(**vars(promoter), earnings=EarningsPublic(**vars(totals))).model_dump(
        mode="json"
    )


def _orders(page: list[AttributedOrder], next_cursor: str | None) -> dict[str, Any]:
    return AttributedOrderList(
        data=[AttributedOrderPublic(**vars(o)) for o in page], next_cursor=next_cursor
    ).model_dump(mode="json")


@router.post(
    "/promoters",
    status_code=status.HTTP_201_CREATED,
    response_model=PromoterPublic,
    summary="Make an agent a promoter, with its link code and commission",
)
async def create(
    body: PromoterCreate, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    async def work(conn: Connection) -> Written:
        promoter = await create_promoter(
            conn,
            agent_id=body.agent_id,
            code=body.code,
            rate_bp=body.rate_bp,
            per_unit=body.per_unit,
            store_agent_id=body.store_agent_id,
        )
        detail = {"code": promoter.code, "rate_bp": body.rate_bp, "per_unit": body.per_unit}
        return _promoter(promoter), f"agent:{body.agent_id}", detail

    return await operator_write(
        request,
        runtime,
        operator,
        action="promoter.created",
        payload=body.model_dump(mode="json"),
        work=work,
    )


@router.patch(
    "/promoters/{agent_id}",
    response_model=PromoterPublic,
    summary="Suspend or resume a promoter, or change its commission (new orders only)",
)
async def update(
    agent_id: Id,
    body: PromoterUpdate,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            promoter = await update_promoter(
                conn, agent_id, status=body.status, rate_bp=body.rate_bp, per_unit=body.per_unit
            )
            await audit.record(
                conn,
                operator.owner_label,
                "promoter.updated",
                f"agent:{agent_id}",
                body.model_dump(mode="json", exclude_none=True),
            )
        return json_response(200, _promoter(promoter))

    payload = {"promoter": agent_id, **body.model_dump(mode="json")}
    return await run_idempotent(request, runtime, operator.owner_label, payload, run)


@router.get(
    "/promoters/{agent_id}",
    response_model=PromotionsPublic,
    summary="A promoter with its earnings",
)
async def read(agent_id: Id, runtime: RuntimeDep, _operator: OperatorDep) -> Response:
    async with runtime.db.acquire() as conn:
        promoter = await get_promoter(conn, agent_id)
        totals = await earnings(conn, agent_id)
    return json_response(200, _promotions(promoter, totals))


@router.get(
    "/promoters/{agent_id}/orders",
    response_model=AttributedOrderList,
    summary="The orders attributed to a promoter, newest first, with their commission",
)
async def orders(
    agent_id: Id,
    runtime: RuntimeDep,
    _operator: OperatorDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    async with runtime.db.acquire() as conn:
        await get_promoter(conn, agent_id)
        page, next_cursor = await attributed_orders(conn, agent_id, limit=limit, cursor=cursor)
    return json_response(200, _orders(page, next_cursor))


@router.get(
    "/me/promotions",
    response_model=PromotionsPublic,
    summary="My promoter link code, commission and earnings (a promoter's API key)",
)
async def my_promotions(runtime: RuntimeDep, agent: AgentDep) -> Response:
    async with runtime.db.acquire() as conn:
        promoter = await get_promoter(conn, agent.agent_id)
        totals = await earnings(conn, agent.agent_id)
    return json_response(200, _promotions(promoter, totals))


@router.get(
    "/me/promotions/orders",
    response_model=AttributedOrderList,
    summary="The orders my link brought, newest first, with my commission on each",
)
async def my_promoted_orders(
    runtime: RuntimeDep, agent: AgentDep, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    async with runtime.db.acquire() as conn:
        await get_promoter(conn, agent.agent_id)
        page, next_cursor = await attributed_orders(
            conn, agent.agent_id, limit=limit, cursor=cursor
        )
    return json_response(200, _orders(page, next_cursor))
