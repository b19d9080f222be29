"""Operator refunds of API issuances."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deps import OperatorDep, RuntimeDep
from api.idempotency import json_response, run_idempotent
from engine.issuance.refunds import IssuanceRefund, refund_issuance
from engine.issuance.service import IssuanceService

router = APIRouter(tags=["issuance"])


class IssuanceRefundCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"
    )


class ReversedCommissionPublic(BaseModel):
    agent_id: int
    amount: int
    account: Literal["held", "balance"] = Field(
        description="Where the commission was taken back from."
    )


class IssuanceRefundPublic(BaseModel):
    id: str
    status: Literal["refunded"]
    agent_id: int
    mode: Literal["live", "test"]
    sku: str
    quantity: int
    amount: int = Field(description="Returned to the account the issuance was paid from.")
    currency: str
    reason: str | None
    refunded_at: datetime
    entry_id: int | None = Field(description="The reversing journal entry (none if free).")
    keys_revoked: int
    commissions_reversed: list[ReversedCommissionPublic]


def _public(refund: IssuanceRefund) -> dict[str, object]:
    return IssuanceRefundPublic(
        id=refund.public_id,
        status="refunded",
        agent_id=refund.agent_id,
        mode="test" if refund.mode == "test" else "live",
        sku=refund.sku,
        quantity=refund.quantity,
        amount=refund.amount,
        currency=refund.currency,
        reason=refund.reason,
        refunded_at=refund.refunded_at,
        entry_id=refund.entry_id,
        keys_revoked=refund.keys_revoked,
        commissions_reversed=[
            ReversedCommissionPublic(
                agent_id=c.agent_id,
                amount=c.amount,
                account="held" if c.account == "held" else "balance",
            )
            for c in refund.commissions
        ],
    ).model_dump(mode="json")


@router.post(
    "/v1/issuances/{public_id}/refund",
    response_model=IssuanceRefundPublic,
    summary="Refund an API issuance (operator): keys revoked, debit returned, commissions reversed",
    description="Once per issuance: a second refund is `409 issuance_already_refunded`. "
    "Accepts Idempotency-Key; audited.",
)
async def refund(
    public_id: Annotated[str, Path(min_length=1, max_length=64)],
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
    body: Annotated[IssuanceRefundCreate | None, Body()] = None,
) -> Response:
    given = body or IssuanceRefundCreate()

    async def work() -> Response:
        async with runtime.db.acquire() as conn:
            done = await refund_issuance(
                conn,
                public_id,
                actor=operator.owner_label,
                reason=given.reason,
                now=datetime.now(UTC),
            )
        # This worker's funds pre-check must not keep a stale balance for a second.
        service: IssuanceService = request.app.state.issuance
        for agent_id in {done.agent_id, *(c.agent_id for c in done.commissions)}:
            service.balances.forget(agent_id)
        return json_response(200, _public(done))

    payload = {"issuance": public_id, **given.model_dump(mode="json")}
    return await run_idempotent(request, runtime, operator.owner_label, payload, work)
