"""The agent's own views and withdrawals, with its API key (`/v1/me/...`)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request, status
from starlette.responses import Response

from api.deps import AgentDep, Cursor, Limit, RuntimeDep
from api.idempotency import json_response, run_idempotent
from api.routers.finance import (
    STATEMENT_FORMATS,
    XLSX_MEDIA_TYPE,
    PeriodDep,
    statement_response,
    withdrawal_body,
)
from api.schemas_finance import (
    MePublic,
    MyIssuancePage,
    MyIssuancePublic,
    MyOrderPage,
    MyOrderPublic,
    StatementFormat,
    StatementPage,
    WithdrawalCreate,
    WithdrawalPage,
    WithdrawalPublic,
)
from engine.distribution import portal
from engine.distribution.admin import require_live
from engine.ledger import statements, withdrawals

router = APIRouter(prefix="/v1/me", tags=["me"])


@router.get(
    "",
    response_model=MePublic,
    summary="My balance, held commissions and credit",
    description="With a test key, the sandbox: the test balance (`mode` says which).",
)
async def me(runtime: RuntimeDep, agent: AgentDep) -> Response:
    found = await portal.summary(runtime.db, agent.agent_id, agent.mode)
    return json_response(200, MePublic(**asdict(found), mode=agent.mode).model_dump(mode="json"))


@router.get(
    "/issuances",
    response_model=MyIssuancePage,
    summary="My issuances of my key's mode (live or test), newest first",
)
async def my_issuances(
    runtime: RuntimeDep, agent: AgentDep, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    before = statements.decode_cursor(cursor, "iss", 1)[0] if cursor else None
    found = await portal.issuances(
        runtime.db, agent.agent_id, limit=limit + 1, before_id=before, mode=agent.mode
    )
    return issuance_page(found, limit)


@router.get(
    "/orders",
    response_model=MyOrderPage,
    summary="My sub-store's orders of my key's mode (live or test), newest first",
)
async def my_orders(
    runtime: RuntimeDep, agent: AgentDep, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    before = statements.decode_cursor(cursor, "ord", 1)[0] if cursor else None
    found = await portal.orders(
        runtime.db, agent.agent_id, limit=limit + 1, before_id=before, mode=agent.mode
    )
    return order_page(found, limit)


@router.get(
    "/statement",
    response_model=StatementPage,
    responses={200: STATEMENT_FORMATS},
    summary="My statement: every line of my accounts with running balances",
    description="With a test key, the statement of the test balance only.",
)
async def my_statement(
    runtime: RuntimeDep,
    agent: AgentDep,
    period: PeriodDep,
    format: StatementFormat = "json",
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    return await statement_response(
        runtime, agent.agent_id, format, limit, cursor, period, agent.mode
    )


@router.get(
    "/statement.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    summary="My whole statement as CSV",
)
async def my_statement_csv(runtime: RuntimeDep, agent: AgentDep, period: PeriodDep) -> Response:
    return await statement_response(runtime, agent.agent_id, "csv", 0, None, period, agent.mode)


@router.get(
    "/statement.xlsx",
    response_class=Response,
    responses={200: {"content": {XLSX_MEDIA_TYPE: {"schema": {"type": "string"}}}}},
    summary="My whole statement as XLSX",
)
async def my_statement_xlsx(runtime: RuntimeDep, agent: AgentDep, period: PeriodDep) -> Response:
    return await statement_response(runtime, agent.agent_id, "xlsx", 0, None, period, agent.mode)


@router.post(
    "/withdrawals",
    status_code=status.HTTP_201_CREATED,
    response_model=WithdrawalPublic,
    summary="Ask to be paid out part of my balance (reserved at once)",
    description="The amount leaves the spendable balance at once, into `withdrawing`, "
    "until an operator approves or rejects it. Only the balance can be withdrawn, never "
    "the credit line: `402 insufficient_balance` otherwise. A test key cannot withdraw: "
    "`403 live_key_required`.",
)
async def request_withdrawal(
    body: WithdrawalCreate, request: Request, runtime: RuntimeDep, agent: AgentDep
) -> Response:
    require_live(agent.mode)

    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            created = await withdrawals.request(
                conn,
                agent.agent_id,
                body.amount,
                actor=agent.owner_label,
                destination=body.destination,
                note=body.note,
            )
        return json_response(201, withdrawal_body(created))

    response = await run_idempotent(
        request, runtime, agent.owner_label, body.model_dump(mode="json"), run
    )
    # This worker's issuance pre-check sees the reservation at once.
    request.app.state.issuance.balances.forget(agent.agent_id)
    return response


@router.get(
    "/withdrawals",
    response_model=WithdrawalPage,
    summary="My withdrawals, newest first (none with a test key: the sandbox has none)",
)
async def my_withdrawals(
    runtime: RuntimeDep, agent: AgentDep, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    if agent.mode != "live":
        return json_response(200, {"data": [], "next_cursor": None})
    before = statements.decode_cursor(cursor, "wd", 1)[0] if cursor else None
    found = await withdrawals.list_withdrawals(
        runtime.db, limit=limit + 1, before_id=before, agent_id=agent.agent_id
    )
    page = found[:limit]
    next_cursor = statements.encode_cursor("wd", page[-1].id) if len(found) > limit else None
    return json_response(
        200, {"data": [withdrawal_body(w) for w in page], "next_cursor": next_cursor}
    )


def issuance_page(found: list[portal.IssuanceSummary], limit: int) -> Response:
    """A page of an agent's issuances (`limit + 1` fetched: the extra one means more)."""
    page = found[:limit]
    data = [
        MyIssuancePublic(
            id=i.public_id,
            sku=i.sku,
            quantity=i.quantity,
            amount=i.amount,
            currency=i.currency,
            reference=i.reference,
            created_at=i.created_at,
        ).model_dump(mode="json")
        for i in page
    ]
    next_cursor = statements.encode_cursor("iss", page[-1].id) if len(found) > limit else None
    return json_response(200, {"data": data, "next_cursor": next_cursor})


def order_page(found: list[portal.OrderSummary], limit: int) -> Response:
    """A page of an agent's store orders, without the order's internal id."""
    page = found[:limit]
    data = [
        MyOrderPublic(**{k: v for k, v in asdict(o).items() if k != "id"}).model_dump(mode="json")
        for o in page
    ]
    next_cursor = statements.encode_cursor("ord", page[-1].id) if len(found) > limit else None
    return json_response(200, {"data": data, "next_cursor": next_cursor})
