"""RFC 9457 problem details: the one place where errors become HTTP responses.

Every error — domain errors, validation, unknown routes and methods, and anything
unexpected — leaves as `application/problem+json` with a stable `code`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import asyncpg
import orjson
import redis.exceptions
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from engine import EngineError, Overloaded, PoolUnavailable
from engine.errors import CommonError, DomainError

log = structlog.get_logger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://kami.dev/problems/"

# Every code any area raises, and its status. A code missing here is a bug caught by
# tests (tests/unit/api/test_problems.py), not a silent 500.
STATUS_BY_CODE: dict[str, int] = {
    CommonError.INVALID_REQUEST: 422,
    CommonError.NOT_FOUND: 404,
    CommonError.UNAUTHENTICATED: 401,
    CommonError.FORBIDDEN: 403,
    CommonError.IDEMPOTENCY_KEY_REQUIRED: 400,
    CommonError.IDEMPOTENCY_CONFLICT: 409,
    CommonError.RATE_LIMITED: 429,
    CommonError.UNAVAILABLE: 503,
    "method_not_allowed": 405,
    "malformed_request": 400,
    "payload_too_large": 413,
    "internal_error": 500,
    # engine.idempotency
    "idempotency_in_progress": 409,
    "idempotency_replay_unavailable": 409,
    # engine.signing: each a kind of bad credentials, so 401 like `unauthenticated`
    "invalid_signature": 401,
    "signature_expired": 401,
    "signature_replayed": 401,
    "api_key_not_found": 404,
    # engine.distribution.keys
    "rotation_in_progress": 409,
    # engine.distribution.promoters
    "promoter_not_found": 404,
    "promoter_exists": 409,
    "promoter_code_taken": 409,
    "promoter_not_for_store": 422,
    # engine.catalog
    "sku_exists": 409,
    "product_not_found": 404,
    "product_not_visible": 403,
    # engine.inventory
    "invalid_file": 422,
    # engine.distribution
    "level_not_found": 404,
    "agent_not_found": 404,
    "unknown_sku": 422,
    # engine.issuance
    "out_of_stock": 409,
    "product_unavailable": 409,
    "pool_unavailable": 503,
    "database_unavailable": 503,
    "overloaded": 503,
    "integrity_alarm": 503,
    "issuance_not_found": 404,
    # engine.orders
    "order_not_found": 404,
    "store_not_found": 404,
    "payment_method_unavailable": 422,
    "payment_provider_unavailable": 502,
    "reservation_limit": 429,
    "lookup_rate_limited": 429,
    "invalid_order_state": 409,
    "payment_rejected": 400,
    "payment_mismatch": 409,
    "refund_failed": 502,
    "price_below_cost": 409,
    "store_slug_taken": 409,
    "live_key_required": 403,
    "issuance_already_refunded": 409,
    # engine.notify
    "invalid_webhook_url": 422,
    "unknown_event_type": 422,
    "webhook_endpoint_not_found": 404,
    "webhook_endpoint_disabled": 409,
    "outbox_message_not_found": 404,
    "outbox_message_not_dead": 409,
    # engine.distribution.commissions
    "invalid_quantity": 422,
    "negative_amount": 422,
    "invalid_promoter": 422,
    "invalid_promoter_rate": 422,
    "duplicate_agent": 422,
    "below_cost_basis": 422,
    "promoter_exceeds_margin": 422,
    # engine.pricing, engine.distribution.levels / tree / sub_agents / upgrades
    "tiers_out_of_order": 422,
    "invalid_discount": 422,
    "price_below_cost_basis": 409,
    "invalid_upgrade_rule": 422,
    "auto_downgrade_disabled": 422,
    "agent_tree_too_deep": 409,
    "sub_agents_not_allowed": 403,
    "level_not_below_parent": 422,
    "level_unchanged": 409,
    # engine.distribution.admin
    "agent_unchanged": 409,
    # engine.ledger
    "insufficient_balance": 402,
    "invalid_amount": 422,
    "withdrawal_not_found": 404,
    "invalid_withdrawal_state": 409,
}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code.replace("_", "-"),
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def problem_for(exc: DomainError) -> Response:
    """The problem document for a domain error (also what idempotent replays store)."""
    code = str(exc.code)
    status = STATUS_BY_CODE.get(code)
    if status is None:
        log.error("unmapped_error_code", code=code)
        status = 500
    extra = dict(exc.extra)
    retry_after = extra.pop("retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return problem(status, code, exc.detail, headers=headers, **extra)


async def _domain_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return problem_for(exc)


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            # "body.quantity" reads better than ["body", "quantity"] in a client's log.
            "field": ".".join(str(part) for part in err.get("loc", ())),
            "message": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem(400, "malformed_request", "The request body is not valid JSON.")
    fields = ", ".join(e["field"] for e in errors[:10])
    return problem(
        422,
        CommonError.INVALID_REQUEST,
        f"The request has invalid fields: {fields}.",
        errors=_jsonable(errors),
    )


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 404:
        return problem(404, CommonError.NOT_FOUND, "No such resource.", headers=headers)
    if exc.status_code == 405:
        return problem(
            405, "method_not_allowed", "This method is not allowed here.", headers=headers
        )
    code = {
        400: "malformed_request",
        401: "unauthenticated",
        403: "forbidden",
        413: "payload_too_large",
    }
    status = exc.status_code
    return problem(
        status,
        code.get(status, "http_error"),
        str(exc.detail) if exc.detail else HTTPStatus(status).phrase,
        headers=headers,
    )


# Connection-level failures of a store: the request did nothing durable; retry later.
STORE_FAILURES: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


async def _store_unavailable(_request: Request, exc: Exception) -> Response:
    log.warning("store_unavailable", error=type(exc).__name__)
    return problem(
        503,
        CommonError.UNAVAILABLE,
        "A data store is unavailable; nothing was changed. Retry shortly.",
        headers={"Retry-After": "1"},
    )


async def _data_error(_request: Request, exc: Exception) -> Response:
    # A value PostgreSQL refuses (out of range, not representable): the request's fault,
    # and the transaction it was in rolled back.
    log.warning("data_error", error=type(exc).__name__)
    return problem(
        422, CommonError.INVALID_REQUEST, "A value in the request cannot be stored as given."
    )


async def _engine_error(_request: Request, exc: Exception) -> Response:
    # Rust core errors that reach here unhandled: connection trouble is retryable, the
    # rest is an integrity problem that must not look like success.
    if isinstance(exc, PoolUnavailable | Overloaded):
        return problem(
            503,
            "pool_unavailable",
            "The key pool is unavailable; nothing was issued. Retry shortly.",
            headers={"Retry-After": "1"},
        )
    log.error("engine_error", error=type(exc).__name__)
    return problem(503, "integrity_alarm", "The request was refused by an integrity check.")


async def _unexpected_error(_request: Request, exc: Exception) -> Response:
    # Reaching here is a bug; the request id ties the client's report to this log line.
    log.exception("unhandled_error", error_type=type(exc).__name__)
    return problem(500, "internal_error", "An unexpected error occurred; it has been logged.")


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(asyncpg.DataError, _data_error)
    for failure in STORE_FAILURES:
        app.add_exception_handler(failure, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
