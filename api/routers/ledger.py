"""The ledger (operator)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import OperatorDep, RuntimeDep
from api.schemas import TrialBalancePublic
from engine.ledger.service import trial_balance

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])


@router.get("/trial-balance", response_model=TrialBalancePublic, summary="Debits equal credits")
async def read_trial_balance(runtime: RuntimeDep, _operator: OperatorDep) -> TrialBalancePublic:
    async with runtime.db.acquire() as conn:
        totals = await trial_balance(conn)
    return TrialBalancePublic(
        debits=totals.debits, credits=totals.credits, balanced=totals.balanced
    )
