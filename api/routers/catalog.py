"""Catalog and inventory (operator): products and key batches."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn

import structlog
from fastapi import APIRouter, Request, status
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response

from api.deps import OperatorDep, RuntimeDep
from api.idempotency import Written, json_response, operator_write, run_idempotent
from api.schemas import BatchCreate, BatchPublic, ProductCreate, ProductPublic, Stock
from engine import EngineError, audit
from engine.catalog.service import (
    Product,
    ProductType,
    StockCounts,
    create_product,
    get_product,
    stock_counts,
)
from engine.errors import CommonError, DomainError
from engine.inventory.files import read_codes_file, screen_codes
from engine.inventory.pools import ensure_present, publish_batch
from engine.inventory.service import BatchResult, add_codes
from engine.issuance.errors import IssuanceError
from engine.runtime import Runtime
from engine.storage.db import Connection

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1/products", tags=["catalog"])


def _public(
    product: Product, stock: StockCounts, test_stock: StockCounts | None = None
) -> dict[str, Any]:
    test = test_stock or StockCounts(0, 0, 0)
    return ProductPublic(
        sku=product.sku,
        name=product.name,
        type=product.type.value,
        price=product.price,
        currency=product.currency,
        status=product.status,
        stock=Stock(available=stock.available, held=stock.held, issued=stock.issued),
        test_stock=Stock(available=test.available, held=test.held, issued=test.issued),
        created_at=product.created_at,
    ).model_dump(mode="json")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ProductPublic,
    summary="Create a product",
)
async def create(
    body: ProductCreate, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    async def work(conn: Connection) -> Written:
        product = await create_product(
            conn,
            sku=body.sku,
            name=body.name,
            type=ProductType(body.type),
            price=body.price,
            currency=body.currency,
        )
        return _public(product, StockCounts(0, 0, 0)), f"product:{body.sku}", None

    response = await operator_write(
        request,
        runtime,
        operator,
        action="product.created",
        payload=body.model_dump(mode="json"),
        work=work,
    )
    if response.status_code == status.HTTP_201_CREATED:
        # An (empty) pool from the start: the first batch then loads into it from memory
        # instead of rebuilding it from PostgreSQL. Without Redis now, that rebuild happens
        # later, when the pool is first found missing.
        try:
            await ensure_present(runtime.db, runtime.pool, body.sku)
        except EngineError as exc:
            log.warning("pool_create_deferred", sku=body.sku, error=type(exc).__name__)
    return response


@router.get("/{sku}", response_model=ProductPublic, summary="A product with its stock")
async def read(sku: str, runtime: RuntimeDep, _operator: OperatorDep) -> Response:
    async with runtime.db.acquire() as conn:
        product = await get_product(conn, sku)
        stock = await stock_counts(conn, product.id)
        test_stock = await stock_counts(conn, product.id, "test")
    return json_response(200, _public(product, stock, test_stock))


_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/BatchCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string"},
                        "expires_at": {"type": "string", "format": "date-time"},
                        "unit_cost": {"type": "integer", "minimum": 0},
                        "format": {"type": "string", "enum": ["txt", "csv", "xlsx"]},
                        "column": {"type": "integer", "minimum": 0},
                        "mode": {"type": "string", "enum": ["live", "test"]},
                    },
                }
            },
        },
    }
}


@router.post(
    "/{sku}/batches",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchPublic,
    summary="Import a batch of keys (JSON codes, or a CSV/TXT/XLSX file)",
    openapi_extra=_BATCH_BODY,
)
async def import_batch(
    sku: str, request: Request, runtime: RuntimeDep, operator: OperatorDep
) -> Response:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        payload, codes, rejected = await _from_form(request)
    else:
        payload, codes, rejected = await _from_json(request)

    async def work() -> Response:
        keyring = request.app.state.keyring
        async with runtime.db.acquire() as conn, conn.transaction():
            product = await get_product(conn, sku)
            result = await add_codes(
                conn,
                keyring,
                product,
                codes,
                name=payload["name"],
                unit_cost=payload["unit_cost"],
                expires_at=payload["expires_at"],
                rejected=len(rejected),
                mode=payload["mode"],
            )
            await audit.record(
                conn,
                operator.owner_label,
                "batch.imported",
                f"product:{sku}",
                {"batch_id": result.batch_id, "accepted": result.accepted, "mode": payload["mode"]},
            )
        await _publish(runtime, sku, result, payload["expires_at"], payload["mode"])
        body = BatchPublic(
            batch_id=result.batch_id,
            accepted=result.accepted,
            duplicates=result.duplicates,
            rejected=result.rejected,
            rejected_lines=[{"line": n, "reason": r} for n, r in rejected[:1000]],
        )
        return json_response(201, body.model_dump(mode="json"))

    fingerprint = {**payload, "expires_at": str(payload["expires_at"]), "codes": codes}
    return await run_idempotent(request, runtime, operator.owner_label, fingerprint, work)


async def _publish(
    runtime: Runtime, sku: str, batch: BatchResult, expires_at: datetime | None, mode: str
) -> None:
    """The batch is committed; making it available in Redis may fail without losing it:
    the pool is rebuilt from PostgreSQL when it is found missing or short."""
    try:
        await publish_batch(
            runtime.db,
            runtime.pool,
            sku,
            batch.batch_id,
            keys=batch.keys,
            expires_at=expires_at,
            mode=mode,
        )
    except EngineError as exc:
        log.error("pool_publish_failed", sku=sku, batch_id=batch.batch_id, error=type(exc).__name__)
        raise DomainError(
            IssuanceError.POOL_UNAVAILABLE,
            "The batch was saved but the key pool is unavailable; "
            "run `kami pools rebuild` once Redis is back.",
            retry_after=5,
        ) from None


async def _from_json(
    request: Request,
) -> tuple[dict[str, Any], list[str], list[tuple[int, str]]]:
    raw = await request.body()
    try:
        body = BatchCreate.model_validate_json(raw)
    except ValidationError as exc:
        _invalid(exc)
    codes, rejected = screen_codes(body.codes)
    payload = {
        "name": body.name,
        "unit_cost": body.unit_cost,
        "expires_at": body.expires_at,
        "mode": body.mode,
    }
    return payload, codes, rejected


async def _from_form(
    request: Request,
) -> tuple[dict[str, Any], list[str], list[tuple[int, str]]]:
    # The context closes the spooled upload however this ends.
    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise DomainError(CommonError.INVALID_REQUEST, "The form needs a `file` field.")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        meta = _form_meta(fields)
        column = fields.get("column")
        codes, rejected = await read_codes_file(
            upload,
            declared_format=fields.get("format"),
            column=int(column) if column and column.isdigit() else None,
        )
    payload = {
        "name": meta.name,
        "unit_cost": meta.unit_cost,
        "expires_at": meta.expires_at,
        "mode": meta.mode,
    }
    return payload, codes, rejected


def _form_meta(fields: dict[str, str]) -> BatchCreate:
    unit_cost = fields.get("unit_cost") or "0"
    if not unit_cost.isdigit():
        raise DomainError(CommonError.INVALID_REQUEST, "unit_cost must be a whole number.")
    try:
        return BatchCreate.model_validate(
            {
                "codes": [],
                "name": fields.get("name", ""),
                "expires_at": fields.get("expires_at") or None,
                "unit_cost": int(unit_cost),
                "mode": fields.get("mode") or "live",
            }
        )
    except ValidationError as exc:
        _invalid(exc)


def _invalid(exc: ValidationError) -> NoReturn:
    fields = [".".join(str(p) for p in err["loc"]) for err in exc.errors()]
    raise DomainError(
        CommonError.INVALID_REQUEST,
        f"The request has invalid fields: {', '.join(fields[:10])}.",
        errors=[
            {"field": f, "message": e["msg"]} for f, e in zip(fields, exc.errors(), strict=True)
        ][:50],
    )
