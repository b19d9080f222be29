"""What an agent pays for a SKU, and whether it may buy it: cached per worker.

The hot path must not read the catalog from PostgreSQL on every request. Terms are cached
for a couple of seconds per (level, SKU); a price change reaches every worker within that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from engine.catalog.service import CatalogError
from engine.errors import DomainError
from engine.issuance.errors import IssuanceError

TERMS_TTL_S = 2.0
_MAX_ENTRIES = 50_000


@dataclass(frozen=True)
class SaleTerms:
    product_id: int
    sku: str
    unit_price: int
    currency: str


class TermsCache:
    def __init__(self, ttl_s: float = TERMS_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[int, str], tuple[float, SaleTerms | DomainError]] = {}

    async def terms(self, db: asyncpg.Pool, level_id: int, sku: str) -> SaleTerms:
        key = (level_id, sku)
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is None or cached[0] <= now:
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            cached = (now + self._ttl_s, await _load(db, level_id, sku))
            self._entries[key] = cached
        found = cached[1]
        if isinstance(found, DomainError):
            raise DomainError(found.code, found.detail)
        return found

    def clear(self) -> None:
        self._entries.clear()


async def _load(db: asyncpg.Pool, level_id: int, sku: str) -> SaleTerms | DomainError:
    row = await db.fetchrow(
        "SELECT p.id, p.sku, p.price, p.currency, p.status, l.visible_skus, "
        "lp.price AS level_price "
        "FROM products p CROSS JOIN agent_levels l "
        "LEFT JOIN agent_level_prices lp ON lp.level_id = l.id AND lp.product_id = p.id "
        "WHERE p.sku = $1 AND l.id = $2",
        sku,
        level_id,
    )
    if row is None:
        return DomainError(CatalogError.PRODUCT_NOT_FOUND, f"No product with SKU {sku}.")
    visible = row["visible_skus"]
    if visible is not None and sku not in visible:
        return DomainError(
            IssuanceError.PRODUCT_NOT_VISIBLE, f"Product {sku} is not available to this account."
        )
    if row["status"] != "active":
        return DomainError(IssuanceError.PRODUCT_UNAVAILABLE, f"Product {sku} is not on sale.")
    # Pricing: the agent level's price for the SKU, else the product's own price.
    price = row["level_price"] if row["level_price"] is not None else row["price"]
    return SaleTerms(
        product_id=row["id"], sku=row["sku"], unit_price=price, currency=row["currency"]
    )
