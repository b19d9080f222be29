"""Bodies of the level, agent-tree and price-list endpoints (api/routers/levels.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from api.schemas import Id, Money, Name, Reference, RequestModel, Sku

MAX_TIERS = 20
MAX_RULES = 20


class TierIn(RequestModel):
    min_quantity: Annotated[int, Field(ge=2, le=1_000_000)]
    unit_price: Money


class TierPublic(BaseModel):
    min_quantity: int
    unit_price: int


class UpgradeRuleIn(RequestModel):
    metric: Literal["sales", "deposits"] = Field(
        description="sales: the agent's issuance amounts plus its sub-store orders paid; "
        "deposits: what was credited to its balance."
    )
    threshold: Money
    window_days: Annotated[int, Field(ge=1, le=3660)]
    to_level_id: Id = Field(
        description="A higher-ranked level: upgrade when the total is at least the "
        "threshold. A lower-ranked one: downgrade when it is below (needs auto_downgrade)."
    )


class UpgradeRulePublic(BaseModel):
    id: int | None
    metric: str
    threshold: int
    window_days: int
    to_level_id: int


# Fields a PATCH may leave out but never set to null.
_NOT_NULL = (
    "name",
    "rank",
    "prices",
    "tiers",
    "can_create_sub_agents",
    "auto_downgrade",
    "upgrade_rules",
)


class AgentLevelUpdate(RequestModel):
    """Only the fields sent change. `prices`, `tiers` and `upgrade_rules` replace the whole
    collection; `discount_bp: null` removes the discount, `visible_skus: null` shows all."""

    name: Name | None = None
    rank: Annotated[int, Field(ge=0, le=1000)] | None = None
    prices: Annotated[dict[Sku, Money], Field(max_length=10_000)] | None = Field(
        default=None, description="Absolute unit prices per SKU (override the discount)."
    )
    discount_bp: Annotated[int, Field(ge=0, le=10_000)] | None = Field(
        default=None,
        description="A discount off the retail price in basis points (1500 = 15% off) for "
        "SKUs without an absolute price; the result is rounded up to the fen.",
    )
    tiers: (
        Annotated[
            dict[Sku, Annotated[list[TierIn], Field(max_length=MAX_TIERS)]],
            Field(max_length=10_000),
        ]
        | None
    ) = Field(
        default=None,
        description="Quantity tiers (价格阶梯) per SKU, by rising min_quantity, each price "
        "below the one before (the first below the level's price).",
    )
    visible_skus: Annotated[list[Sku], Field(max_length=10_000)] | None = None
    can_create_sub_agents: bool | None = None
    auto_downgrade: bool | None = Field(
        default=None, description="Whether this level's downgrade rules are applied."
    )
    upgrade_rules: Annotated[list[UpgradeRuleIn], Field(max_length=MAX_RULES)] | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> AgentLevelUpdate:
        nulls = [f for f in _NOT_NULL if f in self.model_fields_set and getattr(self, f) is None]
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null")
        return self


class AgentLevelDetail(BaseModel):
    id: int
    name: str
    rank: int
    prices: dict[str, int]
    discount_bp: int | None
    tiers: dict[str, list[TierPublic]]
    visible_skus: list[str] | None
    can_create_sub_agents: bool
    auto_downgrade: bool
    upgrade_rules: list[UpgradeRulePublic]
    created_at: datetime
    updated_at: datetime


class AgentLevelPage(BaseModel):
    data: list[AgentLevelDetail]
    next_cursor: str | None


class LevelChangeCreate(RequestModel):
    level_id: Id
    reason: Reference


class LevelChangePublic(BaseModel):
    id: int
    agent_id: int
    from_level_id: int
    to_level_id: int
    kind: Literal["automatic", "manual"]
    actor: str
    reason: str
    rule: dict[str, Any] | None = Field(description="The rule that fired, as it was then.")
    created_at: datetime


class LevelChangePage(BaseModel):
    data: list[LevelChangePublic]
    next_cursor: str | None


class SubAgentCreate(RequestModel):
    name: Name
    level_id: Id = Field(description="A level ranked strictly below your own.")
    prices: Annotated[dict[Sku, Money], Field(max_length=10_000)] = Field(
        default_factory=dict,
        description="What the sub-agent pays you per SKU: at least your own cost. It pays "
        "the higher of this and its level's price.",
    )


class SubAgentPricesUpdate(RequestModel):
    prices: Annotated[dict[Sku, Money], Field(max_length=10_000)]


class SubAgentPublic(BaseModel):
    id: int
    name: str
    level_id: int
    parent_id: int | None
    balance: int
    credit_limit: int
    currency: str
    status: str
    created_at: datetime
    prices: dict[str, int]
    issuance_count: int = 0
    issuance_total: int = Field(0, description="What it bought through the API")
    order_count: int = 0
    order_total: int = Field(0, description="What its sub-store sold (delivered orders)")


class SubAgentApiKey(BaseModel):
    id: int
    key: str = Field(description="The sub-agent's API key, shown once; only its hash is kept.")
    prefix: str


class SubAgentCreated(SubAgentPublic):
    api_key: SubAgentApiKey


class SubAgentPage(BaseModel):
    data: list[SubAgentPublic]
    next_cursor: str | None


class PriceListItemPublic(BaseModel):
    sku: str
    name: str
    currency: str
    retail_price: int
    unit_price: int = Field(description="What you pay for one unit.")
    source: Literal["level_price", "discount", "retail", "parent_price"]
    tiers: list[TierPublic] = Field(description="Lower unit prices from a quantity up.")
    on_sale: bool = Field(
        description="False while the platform's cost for the SKU is above your price."
    )


class PriceListPage(BaseModel):
    data: list[PriceListItemPublic]
    next_cursor: str | None
