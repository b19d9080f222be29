"""Product storage. Callers hold the connection (and the transaction)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from engine.errors import DomainError
from engine.storage.db import Connection, Executor


class CatalogError(StrEnum):
    SKU_EXISTS = "sku_exists"
    PRODUCT_NOT_FOUND = "product_not_found"


class ProductType(StrEnum):
    CARD = "card"
    LINK = "link"
    TOPUP = "topup"


@dataclass(frozen=True)
class Product:
    id: int
    sku: str
    name: str
    type: ProductType
    price: int
    currency: str
    status: str
    created_at: datetime


_COLUMNS = "id, sku, name, type, price, currency, status, created_at"


def _product(row: asyncpg.Record) -> Product:
    return Product(
        id=row["id"],
        sku=row["sku"],
        name=row["name"],
        type=ProductType(row["type"]),
        price=row["price"],
        currency=row["currency"],
        status=row["status"],
        created_at=row["created_at"],
    )


async def create_product(
    conn: Connection,
    *,
    sku: str,
    name: str,
    type: ProductType,
    price: int,
    currency: str = "CNY",
) -> Product:
    try:
        row = await conn.fetchrow(
            f"INSERT INTO products (sku, name, type, price, currency) "  # noqa: S608
            f"VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
            sku,
            name,
            type.value,
            price,
            currency,
        )
    except asyncpg.UniqueViolationError:
        raise DomainError(CatalogError.SKU_EXISTS, f"A product with SKU {sku} exists.") from None
    assert row is not None
    return _product(row)


async def get_product(conn: Connection, sku: str) -> Product:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM products WHERE sku = $1", sku)  # noqa: S608
    if row is None:
        raise DomainError(CatalogError.PRODUCT_NOT_FOUND, f"No product with SKU {sku}.")
    return _product(row)


@dataclass(frozen=True)
class StockCounts:
    available: int
    held: int
    issued: int


async def stock_counts(conn: Executor, product_id: int, mode: str = "live") -> StockCounts:
    """Counts by state from PostgreSQL, the source of truth (revoked keys are not stock),
    of the live stock or the test (sandbox) stock.

    Only keys that left 'available' are indexed by state; the available ones are the
    batches' accepted total minus every other state.
    """
    rows = await conn.fetch(
        "SELECT mode, coalesce(sum(accepted), 0) AS total FROM batches WHERE product_id = $1 "
        "GROUP BY mode",
        product_id,
    )
    totals = {row["mode"]: int(row["total"]) for row in rows}
    if mode not in totals:
        return StockCounts(0, 0, 0)
    if len(totals) == 1:
        # One mode only (the usual case): the count stays on the state index alone.
        rows = await conn.fetch(
            "SELECT state, count(*) AS n FROM card_keys "
            "WHERE product_id = $1 AND state <> 'available' GROUP BY state",
            product_id,
        )
    else:
        rows = await conn.fetch(
            "SELECT k.state, count(*) AS n FROM card_keys k JOIN batches b ON b.id = k.batch_id "
            "WHERE k.product_id = $1 AND k.state <> 'available' AND b.mode = $2 "
            "GROUP BY k.state",
            product_id,
            mode,
        )
    counts = {row["state"]: row["n"] for row in rows}
    return StockCounts(
        available=totals[mode] - sum(counts.values()),
        held=counts.get("held", 0),
        issued=counts.get("issued", 0),
    )
