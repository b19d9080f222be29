"""Bodies of the finance endpoints: withdrawals, statements and the agent's own views."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, Field, StringConstraints

from api.schemas import MAX_MONEY, RequestModel

_NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"
Since = Annotated[
    datetime | None, Query(description="Lines from this time on (RFC 3339, inclusive)")
]
Until = Annotated[datetime | None, Query(description="Lines before this time (exclusive)")]
StatementFormat = Annotated[
    Literal["json", "csv", "xlsx"],
    Query(description="`csv` or `xlsx` download the whole statement instead of a page"),
]
PositiveMoney = Annotated[int, Field(ge=1, le=MAX_MONEY)]
Text200 = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_CONTROLS)]
Text500 = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=_NO_CONTROLS)]


class CommissionHold(RequestModel):
    days: Annotated[int, Field(ge=0, le=365, description="T+N: days a commission is held")]


class WithdrawalCreate(RequestModel):
    amount: PositiveMoney
    destination: Text200 | None = Field(
        None, description="Where to pay it: a bank or Alipay account, as the agent names it"
    )
    note: Text500 | None = None


class WithdrawalDecision(RequestModel):
    reason: Text500 | None = None


class WithdrawalPublic(BaseModel):
    id: int
    agent_id: int
    amount: int
    currency: str
    status: Literal["requested", "approved", "rejected"]
    destination: str | None
    note: str | None
    reason: str | None
    decided_by: str | None
    decided_at: datetime | None
    created_at: datetime


class WithdrawalPage(BaseModel):
    data: list[WithdrawalPublic]
    next_cursor: str | None


class StatementLinePublic(BaseModel):
    entry_id: int
    account: str = Field(description="The agent's account it moved: balance, held or withdrawing")
    kind: str = Field(description="The journal entry's kind: deposit, issuance, order.sale, …")
    reference: str | None
    amount: int = Field(description="Money in (positive) or out (negative), in minor units")
    balance: int = Field(description="The account's balance after this line")
    created_at: datetime


class StatementPage(BaseModel):
    data: list[StatementLinePublic]
    next_cursor: str | None


class MePublic(BaseModel):
    agent_id: int
    name: str
    level_id: int
    parent_id: int | None
    currency: str
    balance: int
    held: int
    withdrawing: int
    commission_total: int
    credit_limit: int
    spendable: int = Field(description="balance + credit_limit: what a purchase may use now")
    mode: Literal["live", "test"] = Field(
        "live", description="The key's mode: `test` reports the sandbox's test balance"
    )


class MyIssuancePublic(BaseModel):
    id: str = Field(description="The issuance id (`iss_…`); its keys: GET /v1/issuances/{id}")
    sku: str
    quantity: int
    amount: int
    currency: str
    reference: str | None
    created_at: datetime


class MyIssuancePage(BaseModel):
    data: list[MyIssuancePublic]
    next_cursor: str | None


class MyOrderPublic(BaseModel):
    order_no: str
    status: str
    sku: str
    quantity: int
    amount: int
    currency: str
    created_at: datetime
    paid_at: datetime | None
    delivered_at: datetime | None


class MyOrderPage(BaseModel):
    data: list[MyOrderPublic]
    next_cursor: str | None
