"""Finance (operator): withdrawals to decide, and per-agent statements with exports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from api.deps import Cursor, Limit, OperatorDep, RuntimeDep
from api.idempotency import json_response, run_idempotent
from api.schemas import Id
from api.schemas_finance import (
    CommissionHold,
    Since,
    StatementFormat,
    StatementLinePublic,
    StatementPage,
    Until,
    WithdrawalDecision,
    WithdrawalPage,
    WithdrawalPublic,
)
from engine import audit
from engine.distribution.service import get_agent
from engine.errors import CommonError, DomainError
from engine.ledger import commissions, statements, withdrawals
from engine.ledger.statements import ALL_TIME, Period
from engine.ledger.withdrawals import Withdrawal, WithdrawalStatus
from engine.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["finance"])

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
STATEMENT_FORMATS = {
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        XLSX_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
    },
    "description": "With `?format=csv|xlsx` (or the `.csv` / `.xlsx` paths): the whole "
    "statement as a download",
}


def withdrawal_body(withdrawal: Withdrawal) -> dict[str, Any]:
    return WithdrawalPublic(**vars(withdrawal)).model_dump(mode="json")


async def period_of(since: Since = None, until: Until = None) -> Period:
    if since is not None and until is not None and until <= since:
        raise DomainError(CommonError.INVALID_REQUEST, "`until` must be after `since`.")
    return Period(since, until)


PeriodDep = Annotated[Period, Depends(period_of)]


async def statement_response(
    runtime: Runtime,
    agent_id: int,
    fmt: str,
    limit: int,
    cursor: str | None,
    period: Period = ALL_TIME,
    mode: str = "live",
) -> Response:
    """A page of JSON, or the whole statement (of the period) as CSV (streamed) or XLSX."""
    filename = f"statement-agent-{agent_id}" + ("-test" if mode == "test" else "")
    if fmt == "csv":
        return StreamingResponse(
            statements.csv_export(runtime.db, agent_id, period, mode),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
        )
    if fmt == "xlsx":
        return Response(
            await statements.xlsx_export(runtime.db, agent_id, period, mode),
            media_type=XLSX_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{filename}.xlsx"'},
        )
    after = statements.decode_line_cursor(cursor) if cursor else None
    found = await statements.statement(
        runtime.db, agent_id, limit=limit + 1, after=after, period=period, mode=mode
    )
    page = found[:limit]
    body = StatementPage(
        data=[StatementLinePublic(**vars(line)) for line in page],
        next_cursor=statements.line_cursor(page[-1]) if len(found) > limit else None,
    )
    return json_response(200, body.model_dump(mode="json"))


@router.get(
    "/withdrawals",
    response_model=WithdrawalPage,
    summary="Withdrawals, newest first (filter by status or agent)",
)
async def list_all(
    runtime: RuntimeDep,
    _operator: OperatorDep,
    status: WithdrawalStatus | None = None,
    agent_id: Id | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    before = statements.decode_cursor(cursor, "wd", 1)[0] if cursor else None
    found = await withdrawals.list_withdrawals(
        runtime.db,
        limit=limit + 1,
        before_id=before,
        status=status.value if status else None,
        agent_id=agent_id,
    )
    page = found[:limit]
    next_cursor = statements.encode_cursor("wd", page[-1].id) if len(found) > limit else None
    return json_response(
        200, {"data": [withdrawal_body(w) for w in page], "next_cursor": next_cursor}
    )


@router.get("/withdrawals/{withdrawal_id}", response_model=WithdrawalPublic, summary="A withdrawal")
async def read(withdrawal_id: Id, runtime: RuntimeDep, _operator: OperatorDep) -> Response:
    return json_response(200, withdrawal_body(await withdrawals.get(runtime.db, withdrawal_id)))


async def _decide(
    request: Request,
    runtime: Runtime,
    operator: OperatorDep,
    withdrawal_id: int,
    decision: WithdrawalStatus,
    body: WithdrawalDecision | None,
) -> Response:
    reason = body.reason if body else None

    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            decided = await withdrawals.decide(
                conn,
                withdrawal_id,
                decision,
                actor=operator.owner_label,
                reason=reason,
                now=datetime.now(UTC),
            )
        return json_response(200, withdrawal_body(decided))

    return await run_idempotent(
        request,
        runtime,
        operator.owner_label,
        {"withdrawal_id": withdrawal_id, "decision": decision.value, "reason": reason},
        run,
    )


@router.post(
    "/withdrawals/{withdrawal_id}/approve",
    response_model=WithdrawalPublic,
    summary="Approve a withdrawal: the reserved funds are paid out of the bank account",
    description="Approving an approved withdrawal answers it unchanged; a rejected one is "
    "`409 invalid_withdrawal_state`.",
)
async def approve(
    withdrawal_id: Id,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
    body: WithdrawalDecision | None = None,
) -> Response:
    return await _decide(request, runtime, operator, withdrawal_id, WithdrawalStatus.APPROVED, body)


@router.post(
    "/withdrawals/{withdrawal_id}/reject",
    response_model=WithdrawalPublic,
    summary="Reject a withdrawal: the reserved funds return to the agent's balance",
    description="Rejecting a rejected withdrawal answers it unchanged; an approved one is "
    "`409 invalid_withdrawal_state`.",
)
async def reject(
    withdrawal_id: Id,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
    body: WithdrawalDecision | None = None,
) -> Response:
    response = await _decide(
        request, runtime, operator, withdrawal_id, WithdrawalStatus.REJECTED, body
    )
    return response


@router.get(
    "/agents/{agent_id}/statement",
    response_model=StatementPage,
    responses={200: STATEMENT_FORMATS},
    summary="An agent's statement: every line of its accounts with running balances",
)
async def agent_statement(
    agent_id: Id,
    runtime: RuntimeDep,
    _operator: OperatorDep,
    period: PeriodDep,
    format: StatementFormat = "json",
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    await get_agent(runtime.db, agent_id)
    return await statement_response(runtime, agent_id, format, limit, cursor, period)


@router.get(
    "/agents/{agent_id}/statement.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    summary="An agent's whole statement as CSV",
)
async def agent_statement_csv(
    agent_id: Id, runtime: RuntimeDep, _operator: OperatorDep, period: PeriodDep
) -> Response:
    await get_agent(runtime.db, agent_id)
    return await statement_response(runtime, agent_id, "csv", 0, None, period)


@router.get(
    "/agents/{agent_id}/statement.xlsx",
    response_class=Response,
    responses={200: {"content": {XLSX_MEDIA_TYPE: {"schema": {"type": "string"}}}}},
    summary="An agent's whole statement as XLSX",
)
async def agent_statement_xlsx(
    agent_id: Id, runtime: RuntimeDep, _operator: OperatorDep, period: PeriodDep
) -> Response:
    await get_agent(runtime.db, agent_id)
    return await statement_response(runtime, agent_id, "xlsx", 0, None, period)


@router.put(
    "/agent-levels/{level_id}/commission-hold",
    response_model=CommissionHold,
    summary="Hold a level's commissions T+N days before they become spendable",
    description="0 credits commissions to the balance at once. Applies to commissions "
    "earned from now on (within 10 s in every worker); earlier ones keep their release time.",
)
async def set_commission_hold(
    level_id: Id,
    body: CommissionHold,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            days = await commissions.set_hold_days(conn, level_id, body.days)
            await audit.record(
                conn,
                operator.owner_label,
                "agent_level.commission_hold_set",
                f"agent_level:{level_id}",
                {"days": days},
            )
        return json_response(200, CommissionHold(days=days).model_dump())

    response = await run_idempotent(
        request, runtime, operator.owner_label, {"level_id": level_id, "days": body.days}, run
    )
    # This worker applies the new hold at once; the others when their cached trees expire.
    request.app.state.issuance.ancestry.clear()
    return response
