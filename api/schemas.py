"""Request and response bodies of the public API (`ProductCreate`, `ProductPublic`, …).

Money is an integer in minor units; request models are strict (a string is not a number)
and refuse unknown fields, so a typo is a 422 rather than a silently ignored field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_MONEY = 10**15  # far above any real amount; keeps every sum inside a bigint

Sku = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Money = Annotated[int, Field(ge=0, le=MAX_MONEY)]
# Free text never carries control characters (PostgreSQL refuses NUL; logs and exports
# should not carry the rest).
_NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, strip_whitespace=True, pattern=_NO_CONTROLS),
]
Reference = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_CONTROLS)]
Id = Annotated[int, Field(ge=1, le=2**63 - 1)]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Stock(BaseModel):
    available: int
    held: int
    issued: int


class ProductCreate(RequestModel):
    sku: Sku
    name: Name
    type: Literal["card", "link", "topup"]
    price: Money
    currency: Currency = "CNY"


class ProductPublic(BaseModel):
    sku: str
    name: str
    type: str
    price: int
    currency: str
    status: str
    stock: Stock
    test_stock: Stock = Field(
        default_factory=lambda: Stock(available=0, held=0, issued=0),
        description="The sandbox's stock (batches imported with mode test), apart from `stock`.",
    )
    created_at: datetime


class BatchCreate(RequestModel):
    codes: Annotated[
        list[Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=200_000)
    ]
    name: Annotated[str, StringConstraints(max_length=200, pattern=_NO_CONTROLS)] = ""
    expires_at: datetime | None = None
    unit_cost: Money = 0
    mode: Literal["live", "test"] = Field(
        default="live", description="test: stock only test (kami_test_) keys can draw from."
    )

    model_config = ConfigDict(extra="forbid", strict=False)


class RejectedLine(BaseModel):
    line: int
    reason: str


class BatchPublic(BaseModel):
    batch_id: int
    accepted: int
    duplicates: int
    rejected: int
    rejected_lines: list[RejectedLine] = Field(default_factory=list)


class AgentLevelCreate(RequestModel):
    name: Name
    rank: Annotated[int, Field(ge=0, le=1000)]
    prices: Annotated[dict[Sku, Money], Field(max_length=10_000)] = Field(default_factory=dict)
    visible_skus: Annotated[list[Sku], Field(max_length=10_000)] | None = None


class AgentLevelPublic(BaseModel):
    id: int
    name: str
    rank: int
    prices: dict[str, int]
    visible_skus: list[str] | None
    created_at: datetime


class AgentCreate(RequestModel):
    name: Name
    level_id: Id
    parent_id: Id | None = None
    credit_limit: Money = 0


class AgentPublic(BaseModel):
    id: int
    name: str
    level_id: int
    parent_id: int | None
    balance: int
    credit_limit: int
    currency: str
    status: str
    created_at: datetime
    held: int = Field(0, description="Commissions held by the level's T+N rule, not yet spendable")
    commission_total: int = Field(0, description="Every commission earned, net of reversals")
    test_balance: int = Field(default=0, description="The sandbox balance test keys spend.")


RateLimit = Annotated[int, Field(ge=1, le=1_000_000)]
_RATE_LIMIT = "Requests per second with this key (429 rate_limited past it); null: the default."


class ApiKeyCreate(RequestModel):
    mode: Literal["live", "test"] = "live"
    require_signature: bool = Field(
        default=False,
        description="Require HMAC-SHA256 request signatures (docs/SIGNING.md) with this key.",
    )
    rate_limit_per_s: RateLimit | None = Field(default=None, description=_RATE_LIMIT)


_SHOWN_ONCE = (
    "The HMAC key for X-Kami-Signature, shown once, when it is created; null otherwise. "
    "Stored sealed under the master key, never logged."
)


class ApiKeyCreated(BaseModel):
    id: int
    key: str = Field(description="The secret, shown once; only its hash is stored.")
    mode: str
    prefix: str
    require_signature: bool = False
    signing_secret: str | None = Field(default=None, description=_SHOWN_ONCE)
    rate_limit_per_s: int | None = None


class ApiKeyUpdate(RequestModel):
    require_signature: bool | None = Field(
        default=None, description="Omitted: signing stays as it is."
    )
    rate_limit_per_s: RateLimit | None = Field(
        default=None, description=_RATE_LIMIT + " Omitted: unchanged."
    )
    rotate_signing_secret: bool = Field(
        default=False, description="Replace the signing secret; the old one stops at once."
    )


class ApiKeyPublic(BaseModel):
    id: int
    agent_id: int
    mode: str
    prefix: str
    require_signature: bool
    signing_secret: str | None = Field(default=None, description=_SHOWN_ONCE)
    rate_limit_per_s: int | None = None


class DepositCreate(RequestModel):
    amount: Annotated[int, Field(ge=1, le=MAX_MONEY)]
    reference: Reference | None = None
    mode: Literal["live", "test"] = Field(
        default="live", description="test: credit the sandbox balance that test keys spend."
    )


class DepositPublic(BaseModel):
    entry_id: int
    balance: int


class TrialBalancePublic(BaseModel):
    debits: int
    credits: int
    balanced: bool


class IssuanceCreate(RequestModel):
    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=100)]
    reference: Reference | None = None


class IssuedKeyPublic(BaseModel):
    code: str
    expires_at: datetime | None


class IssuancePublic(BaseModel):
    id: str
    sku: str
    quantity: int
    amount: int
    currency: str
    reference: str | None
    keys: list[IssuedKeyPublic]
    created_at: datetime
    # `refunded` once an operator refunded it (GET); the 201 and its replays say `issued`.
    status: Literal["issued", "refunded"] = "issued"


class Problem(BaseModel):
    """An RFC 9457 problem document; `code` is stable and machine-readable."""

    type: str
    title: str
    status: int
    detail: str
    code: str

    model_config = ConfigDict(extra="allow")


def _problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description}


# Error responses every v1 operation may give; the OpenAPI document lists them as
# application/problem+json (see api.app.openapi).
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _problem("Malformed request, or a required header is missing"),
    401: _problem("Missing or bad credentials"),
    402: _problem("The balance does not cover the amount"),
    403: _problem("Valid credentials, not allowed"),
    404: _problem("No such resource"),
    409: _problem("Conflict (exists, out of stock, idempotency)"),
    413: _problem("Request too large"),
    422: _problem("Invalid fields"),
    429: _problem("Rate limited"),
    503: _problem("A data store is unavailable; retry after Retry-After"),
}
