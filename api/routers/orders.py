"""Storefront orders (buyers, no account), payment callbacks, operator refunds."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import structlog
from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from api.deps import OperatorDep, RuntimeDep, authenticate, bearer_token
from api.idempotency import json_response, run_idempotent
from engine import audit
from engine.errors import CommonError, DomainError
from engine.orders.errors import OrderError
from engine.orders.service import NewOrder, OrderService, OrderView, contact_digest
from engine.payments.base import PaymentRejected
from engine.payments.sandbox import SandboxProvider
from engine.principals import AgentKey

log = structlog.get_logger(__name__)
T = TypeVar("T")

router = APIRouter(tags=["orders"])

_ORDER_NO = r"^[0-9A-Z]{14,40}$"
TEST_KEY_PREFIX = "kami_test_"
_SKU = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_EMAIL = r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$"


class Contact(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    email: str | None = Field(default=None, min_length=3, max_length=254, pattern=_EMAIL)
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9][0-9 -]{4,30}$")

    @model_validator(mode="after")
    def _exactly_one(self) -> Contact:
        if (self.email is None) == (self.phone is None):
            raise ValueError("give exactly one of email or phone")
        return self


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sku: str = Field(pattern=_SKU)
    quantity: int = Field(ge=1, le=100)
    contact: Contact
    payment_method: Literal["sandbox", "epay", "alipay", "wechatpay"]
    store: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    locale: Literal["zh-CN", "en"] = "zh-CN"
    device: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[ -~]+$")
    promoter: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{4,32}$",
        description="A promoter's link code (推广员): the order is attributed to it and its "
        "commission is part of the sale's split.",
    )


class OrderCreated(BaseModel):
    order_no: str
    status: str
    amount: int
    currency: str
    pay_url: str | None
    qr_code: str | None
    expires_at: datetime
    lookup_token: str


class OrderPublic(BaseModel):
    order_no: str
    status: str
    sku: str
    quantity: int
    amount: int
    currency: str
    expires_at: datetime
    created_at: datetime
    paid_at: datetime | None
    delivered_at: datetime | None
    keys: list[str] | None = Field(default=None, description="Present once the order is delivered.")


class RefundCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")


def _service(request: Request) -> OrderService:
    service: OrderService = request.app.state.orders
    return service


def _public(view: OrderView) -> dict[str, Any]:
    body = OrderPublic(**vars(view)).model_dump(mode="json")
    if view.keys is None:
        body.pop("keys")
    return body


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _count_miss(request: Request, runtime: RuntimeDep) -> None:
    """Failed lookups per IP and minute: past the limit, even right tokens wait, so order
    numbers and tokens cannot be guessed at speed."""
    key = f"{runtime.settings.redis_namespace}:lookup-miss:{_client_ip(request) or '-'}"
    misses = await runtime.redis.incr(key)
    if misses == 1:
        await runtime.redis.expire(key, 60)


async def _guarded(request: Request, runtime: RuntimeDep, lookup: Callable[[], Awaitable[T]]) -> T:
    """A buyer's lookup within the failed-lookup budget of its IP; a miss spends from it."""
    await _check_lookup_budget(request, runtime)
    try:
        return await lookup()
    except DomainError as exc:
        if exc.code is OrderError.ORDER_NOT_FOUND:
            await _count_miss(request, runtime)
        raise


async def _check_lookup_budget(request: Request, runtime: RuntimeDep) -> None:
    key = f"{runtime.settings.redis_namespace}:lookup-miss:{_client_ip(request) or '-'}"
    misses = await runtime.redis.get(key)
    if misses is not None and int(misses) >= runtime.settings.order_lookup_misses_per_minute:
        raise DomainError(
            OrderError.LOOKUP_RATE_LIMITED,
            "Too many failed order lookups from here; wait a minute.",
            retry_after=60,
        )


async def _order_mode(request: Request, runtime: RuntimeDep) -> str:
    """Buyers send no credentials; a storefront testing its integration sends its test key
    (`kami_test_…`) and gets a test order. Any other Authorization is ignored, as before."""
    token = bearer_token(request)
    if token is None or not token.startswith(TEST_KEY_PREFIX):
        return "live"
    principal = await authenticate(request, runtime, token)
    return "test" if isinstance(principal, AgentKey) and principal.mode == "test" else "live"


@router.post(
    "/v1/orders",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderCreated,
    summary="Order keys (buyer): holds them until expires_at, returns where to pay",
    description="With a test key (`Authorization: Bearer kami_test_…`) the order is a test "
    "order: test stock, the sandbox provider only, the sandbox's money.",
)
async def create_order(body: OrderCreate, request: Request, runtime: RuntimeDep) -> Response:
    mode = await _order_mode(request, runtime)
    kind, contact = (
        ("email", str(body.contact.email))
        if body.contact.email is not None
        else ("phone", str(body.contact.phone))
    )
    new = NewOrder(
        sku=body.sku,
        quantity=body.quantity,
        contact_kind=kind,
        contact=contact,
        payment_method=body.payment_method,
        store=body.store,
        client_ip=_client_ip(request),
        device=body.device,
        locale=body.locale,
        promoter=body.promoter,
        mode=mode,
    )

    async def work() -> Response:
        created = await _service(request).create(new)
        return json_response(201, OrderCreated(**vars(created)).model_dump(mode="json"))

    # Buyers have no account: their retries are told apart by contact, so two buyers who
    # pick the same Idempotency-Key never see each other's order.
    owner = f"buyer:{'test:' if mode == 'test' else ''}" + contact_digest(kind, contact).hex()[:32]
    return await run_idempotent(request, runtime, owner, body.model_dump(mode="json"), work)


@router.get(
    "/v1/orders/{order_no}",
    response_model=OrderPublic,
    response_model_exclude_none=True,
    summary="Look up an order with its lookup token (keys once delivered)",
)
async def get_order(
    order_no: str,
    request: Request,
    runtime: RuntimeDep,
    token: Annotated[str, Query(min_length=1, max_length=128)],
) -> Response:
    view = await _guarded(request, runtime, lambda: _service(request).lookup(order_no, token))
    return json_response(200, _public(view))


class LookupCodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    email: str = Field(min_length=3, max_length=254, pattern=_EMAIL)
    locale: Literal["zh-CN", "en"] = "zh-CN"


class LookupByCode(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    email: str = Field(min_length=3, max_length=254, pattern=_EMAIL)
    code: str = Field(pattern=r"^[0-9]{6}$")


class OrderList(BaseModel):
    data: list[OrderPublic]
    next_cursor: str | None = None


@router.post(
    "/v1/orders/lookup-codes",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Email a one-time code that lists this address's orders (same answer either way)",
)
async def send_lookup_code(
    body: LookupCodeRequest, request: Request, runtime: RuntimeDep
) -> Response:
    await _check_lookup_budget(request, runtime)
    await _service(request).send_lookup_code(
        runtime.redis, body.email, body.locale, runtime.settings.redis_namespace
    )
    return json_response(202, {"sent": True})


@router.post(
    "/v1/orders/lookup",
    response_model=OrderList,
    summary="This address's orders, for the code emailed to it (keys once delivered)",
)
async def lookup_by_code(body: LookupByCode, request: Request, runtime: RuntimeDep) -> Response:
    views = await _guarded(
        request,
        runtime,
        lambda: _service(request).orders_by_code(
            runtime.redis, body.email, body.code, runtime.settings.redis_namespace
        ),
    )
    return json_response(200, {"data": [_public(v) for v in views], "next_cursor": None})


@router.get(
    "/v1/orders/{order_no}/reveal",
    response_model=OrderPublic,
    summary="Reveal a delivered order's keys through the one-time link of its email",
)
async def reveal_order(
    order_no: str,
    request: Request,
    runtime: RuntimeDep,
    link: Annotated[str, Query(min_length=1, max_length=128)],
) -> Response:
    view = await _guarded(
        request, runtime, lambda: _service(request).reveal_by_link(order_no, link)
    )
    return json_response(200, _public(view))


@router.post(
    "/v1/orders/{order_no}/cancel",
    response_model=OrderPublic,
    summary="Cancel an unpaid order (buyer, with its lookup token); its keys go back",
)
async def cancel_order(
    order_no: str,
    request: Request,
    runtime: RuntimeDep,
    token: Annotated[str, Query(min_length=1, max_length=128)],
) -> Response:
    view = await _guarded(request, runtime, lambda: _service(request).cancel(order_no, token))
    return json_response(200, _public(view))


@router.post(
    "/v1/orders/{order_no}/refund",
    response_model=OrderPublic,
    response_model_exclude_none=True,
    summary="Refund an order (operator): provider refund, keys revoked, sale reversed",
)
async def refund_order(
    order_no: str,
    body: RefundCreate,
    request: Request,
    runtime: RuntimeDep,
    operator: OperatorDep,
) -> Response:
    async def work() -> Response:
        view = await _service(request).refund(
            order_no, actor=operator.owner_label, reason=body.reason
        )
        return json_response(200, _public(view))

    payload = {"order_no": order_no, **body.model_dump(mode="json")}
    return await run_idempotent(request, runtime, operator.owner_label, payload, work)


async def _notify(provider_name: str, request: Request) -> Response:
    service = _service(request)
    provider = service.providers.get(provider_name)
    if provider is None:
        raise DomainError(CommonError.NOT_FOUND, f"No payment provider {provider_name} here.")
    body = await request.body()
    try:
        notice = provider.verify_notify(
            method=request.method,
            headers=dict(request.headers),
            query=dict(request.query_params),
            body=body,
        )
    except PaymentRejected as exc:
        log.warning("payment_callback_rejected", provider=provider_name, code=exc.code)
        reply = provider.reply_error()
        return Response(reply.body, status_code=reply.status_code, media_type=reply.media_type)
    try:
        outcome = await service.apply_payment(notice)
    except DomainError as exc:
        log.warning("payment_callback_refused", provider=provider_name, code=str(exc.code))
        reply = provider.reply_error()
        return Response(reply.body, status_code=reply.status_code, media_type=reply.media_type)
    log.info("payment_applied", provider=provider_name, result=outcome.result)
    # Only now, after the commit, does the provider hear that we have it.
    reply = provider.reply_ok()
    return Response(reply.body, status_code=reply.status_code, media_type=reply.media_type)


@router.post(
    "/v1/payments/{provider}/notify",
    summary="Payment provider callbacks (verified by the provider's signature)",
    response_class=Response,
)
async def payment_notify(provider: str, request: Request) -> Response:
    return await _notify(provider, request)


@router.get(
    "/v1/payments/{provider}/notify",
    summary="Payment provider callbacks sent as GET (易支付 / epay)",
    response_class=Response,
)
async def payment_notify_get(provider: str, request: Request) -> Response:
    return await _notify(provider, request)


class SandboxPaid(BaseModel):
    order_no: str
    result: Literal["delivered", "refund_due", "replay", "ignored"]


@router.post(
    "/v1/payments/sandbox/{order_no}/pay",
    summary="Sandbox only: pay an order through the same path as a real callback",
    response_model=SandboxPaid,
)
async def sandbox_pay(order_no: str, request: Request, runtime: RuntimeDep) -> Response:
    service = _service(request)
    sandbox = service.providers.get("sandbox")
    if not isinstance(sandbox, SandboxProvider):
        raise DomainError(CommonError.NOT_FOUND, "The sandbox is not enabled here.")
    row = await runtime.db.fetchrow(
        "SELECT amount, currency FROM orders WHERE order_no = $1", order_no
    )
    if row is None:
        raise DomainError(OrderError.ORDER_NOT_FOUND, "No such order.")
    signed = sandbox.sign_payment(
        order_no, row["amount"], row["currency"], "SBX" + secrets.token_hex(10).upper()
    )
    notice = sandbox.verify_notify(
        method=signed.method, headers=signed.headers, query=signed.query, body=signed.body
    )
    outcome = await service.apply_payment(notice)
    async with runtime.db.acquire() as conn:
        await audit.record(conn, "sandbox", "order.sandbox_paid", f"order:{order_no}")
    return json_response(200, {"order_no": order_no, "result": outcome.result})
