"""Sub-stores: the operator's and the agent's own store settings, and the public page."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.responses import Response

from api.deps import AgentDep, OperatorDep, RuntimeDep
from api.idempotency import Written, json_response, operator_write, run_idempotent
from api.routers.orders import _EMAIL, _SKU
from engine import audit
from engine.errors import DomainError
from engine.orders.errors import OrderError
from engine.orders.stores import Markup, Store, agent_store, get_store, set_store
from engine.principals import AgentKey
from engine.storage.db import Connection

router = APIRouter(tags=["stores"])

_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
_CONTACT_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_CONTACT_VALUE = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,200}$")
_PHONE = re.compile(r"^\+?[0-9][0-9 -]{4,30}$")
_MAX_CONTACT_FIELDS = 8


class StoreMarkup(BaseModel):
    """A store-wide markup over the agent's own cost, for SKUs without an absolute price."""

    model_config = ConfigDict(extra="forbid", strict=True)
    rate_bp: int | None = Field(
        default=None, ge=0, le=100_000, description="Basis points of the cost (2000 = +20%)."
    )
    per_unit: int | None = Field(
        default=None, ge=0, le=10**12, description="A fixed amount per unit, in minor units."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> StoreMarkup:
        if (self.rate_bp is None) == (self.per_unit is None):
            raise ValueError("give exactly one of rate_bp or per_unit")
        return self


class StoreSet(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    title: str = Field(min_length=1, max_length=200, pattern=_NO_CONTROL)
    contact: dict[str, str] = Field(
        default_factory=dict,
        description="Free named fields shown on the store's page, e.g. email, phone, qq, "
        "wechat (at most 8; names a-z0-9_, values 1-200 characters without control "
        "characters; `email` and `phone` must look like one).",
    )
    markup: StoreMarkup | None = None
    prices: dict[Annotated[str, Field(pattern=_SKU)], Annotated[int, Field(ge=0, le=10**12)]] = (
        Field(default_factory=dict, max_length=10_000, description="Absolute prices by SKU.")
    )

    @field_validator("contact")
    @classmethod
    def _contact(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > _MAX_CONTACT_FIELDS:
            raise ValueError(f"at most {_MAX_CONTACT_FIELDS} contact fields")
        for name, text in value.items():
            if not _CONTACT_FIELD.match(name):
                raise ValueError(f"contact field names are a-z, 0-9 and _: {name[:40]!r}")
            if not _CONTACT_VALUE.match(text):
                raise ValueError(f"contact.{name}: 1-200 characters, no control characters")
        if "email" in value and not re.match(_EMAIL, value["email"]):
            raise ValueError("contact.email is not an email address")
        if "phone" in value and not _PHONE.match(value["phone"]):
            raise ValueError("contact.phone is not a phone number")
        return value


class StoreItemPublic(BaseModel):
    sku: str
    name: str
    price: int
    currency: str


class StorePublic(BaseModel):
    agent_id: int
    slug: str
    title: str
    contact: dict[str, str]
    items: list[StoreItemPublic]


class StoreSettingsPublic(StorePublic):
    """The public page plus the settings behind its prices (owner and operators only:
    a markup or an absolute price next to a retail price would reveal the agent's cost)."""

    markup: StoreMarkup | None
    prices: dict[str, int]


def _public(store: Store) -> dict[str, Any]:
    return StorePublic(
        agent_id=store.agent_id,
        slug=store.slug,
        title=store.title,
        contact=store.contact,
        items=[StoreItemPublic(**vars(item)) for item in store.items],
    ).model_dump(mode="json")


def _settings(store: Store) -> dict[str, Any]:
    markup = (
        StoreMarkup(rate_bp=store.markup.rate_bp, per_unit=store.markup.per_unit)
        if store.markup is not None
        else None
    )
    return {**_public(store), "markup": markup and markup.model_dump(), "prices": store.prices}


async def _write(conn: Connection, agent_id: int, body: StoreSet, *, own: bool) -> Written:
    markup = (
        Markup(rate_bp=body.markup.rate_bp, per_unit=body.markup.per_unit)
        if body.markup is not None
        else None
    )
    store, changes = await set_store(
        conn,
        agent_id,
        slug=body.slug,
        title=body.title,
        prices=body.prices,
        contact=body.contact,
        markup=markup,
        visible_only=own,
    )
    return _settings(store), f"agent:{agent_id}", {"slug": store.slug, "changes": changes}


@router.post(
    "/v1/agents/{agent_id}/store",
    status_code=status.HTTP_201_CREATED,
    response_model=StoreSettingsPublic,
    summary="Give an agent its sub-store (or replace it): slug, title, contact, markup, prices",
)
async def set_agent_store(
    agent_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    body: StoreSet,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    async def work(conn: Connection) -> Written:
        return await _write(conn, agent_id, body, own=False)

    payload = {"agent_id": agent_id, **body.model_dump(mode="json")}
    return await operator_write(
        request, runtime, operator, action="store.set", payload=payload, work=work
    )


@router.get(
    "/v1/agents/{agent_id}/store",
    response_model=StoreSettingsPublic,
    summary="An agent's sub-store with its settings (operator)",
)
async def read_agent_store(
    agent_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    store = await agent_store(runtime.db, agent_id)
    if store is None:
        raise DomainError(OrderError.STORE_NOT_FOUND, f"Agent {agent_id} has no store.")
    return json_response(200, _settings(store))


def _live(agent: AgentKey) -> None:
    # A store sells for real money: a sandbox key must not reprice it.
    if agent.mode != "live":
        raise DomainError(
            OrderError.LIVE_KEY_REQUIRED, "Managing a store needs a live key (kami_live_…)."
        )


@router.get(
    "/v1/me/store",
    response_model=StoreSettingsPublic,
    summary="My sub-store with its settings (my live API key)",
)
async def read_my_store(runtime: RuntimeDep, agent: AgentDep) -> Response:
    _live(agent)
    store = await agent_store(runtime.db, agent.agent_id)
    if store is None:
        raise DomainError(OrderError.STORE_NOT_FOUND, "You have no store yet.")
    return json_response(200, _settings(store))


@router.put(
    "/v1/me/store",
    response_model=StoreSettingsPublic,
    summary="Set up or replace my sub-store: slug, title, contact, markup, prices",
    description="Prices only for SKUs my level may see, at or above my own cost. "
    "Accepts Idempotency-Key; every change is audited with what it changed.",
)
async def put_my_store(
    body: StoreSet, request: Request, runtime: RuntimeDep, agent: AgentDep
) -> Response:
    _live(agent)

    async def work() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            document, subject, detail = await _write(conn, agent.agent_id, body, own=True)
            await audit.record(conn, agent.owner_label, "store.set", subject, detail)
        return json_response(200, document)

    return await run_idempotent(
        request, runtime, agent.owner_label, body.model_dump(mode="json"), work
    )


@router.get(
    "/v1/stores/{slug}",
    response_model=StorePublic,
    summary="A sub-store, its contact and what it sells, at its prices (public)",
)
async def read_store(slug: str, runtime: RuntimeDep) -> Response:
    store = await get_store(runtime.db, slug)
    if store is None:
        raise DomainError(OrderError.STORE_NOT_FOUND, f"No store {slug}.")
    return json_response(200, _public(store))
