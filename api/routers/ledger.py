"""The ledger (operator)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.deps import OperatorDep, RuntimeDep
from api.schemas import TrialBalancePublic
from engine.ledger.service import trial_balance

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])


@router.get("/trial-balance", response_model=TrialBalancePublic, summary="Debits equal credits")
async def read_trial_balance(
    runtime: RuntimeDep,
    _operator: OperatorDep,
    mode: Annotated[
        Literal["live", "test"] | None,
        Query(description="Only the live accounts, or only the sandbox's; omitted: all."),
    ] = None,
) -> TrialBalancePublic:
    async with runtime.db.acquire() as conn:
        totals = await trial_balance(conn, mode)
    return TrialBalancePublic(
        debits=totals.debits, credits=totals.credits, balanced=totals.balanced
    )
