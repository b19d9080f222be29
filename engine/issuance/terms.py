"""What an agent pays for a SKU, and whether it may buy it: cached per worker.

The hot path must not read the catalog from PostgreSQL on every request. Terms are cached
for a couple of seconds per (level, SKU) — the level's base price, discount, quantity
tiers and the platform's cost basis, all from one query — and a parent's price for a
sub-agent per (agent, SKU), looked up only when some agent of the level has one. A price
change reaches every worker within the TTL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from engine.catalog.service import CatalogError
from engine.errors import DomainError
from engine.issuance.errors import IssuanceError
from engine.pricing import PricingError, Quote, SkuPricing, quote
from engine.pricing.store import level_terms_row, parent_price, pricing_from

TERMS_TTL_S = 2.0
_MAX_ENTRIES = 50_000


@dataclass(frozen=True)
class SaleTerms:
    product_id: int
    sku: str
    # The level's base unit price (quantity 1, before a parent's price).
    unit_price: int
    currency: str
    pricing: SkuPricing | None = None
    has_overrides: bool = False


class TermsCache:
    def __init__(self, ttl_s: float = TERMS_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[int, str], tuple[float, SaleTerms | DomainError]] = {}
        self._parent_prices: dict[tuple[int, int], tuple[float, int | None]] = {}

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

    async def price(
        self, db: asyncpg.Pool, level_id: int, agent_id: int, sku: str, quantity: int
    ) -> tuple[SaleTerms, Quote]:
        """The terms and the quote for `quantity` units. The caller refuses a quote that
        does not cover the cost basis (`below_cost_basis`), after checking for a replay."""
        terms = await self.terms(db, level_id, sku)
        assert terms.pricing is not None
        above = None
        if terms.has_overrides:
            above = await self._parent_price(db, agent_id, terms.product_id)
        return terms, quote(terms.pricing, quantity, parent_price=above)

    async def _parent_price(self, db: asyncpg.Pool, agent_id: int, product_id: int) -> int | None:
        key = (agent_id, product_id)
        now = time.monotonic()
        cached = self._parent_prices.get(key)
        if cached is None or cached[0] <= now:
            if len(self._parent_prices) >= _MAX_ENTRIES:
                self._parent_prices.clear()
            cached = (now + self._ttl_s, await parent_price(db, agent_id, product_id))
            self._parent_prices[key] = cached
        return cached[1]

    def clear(self) -> None:
        self._entries.clear()
        self._parent_prices.clear()


async def _load(db: asyncpg.Pool, level_id: int, sku: str) -> SaleTerms | DomainError:
    row = await level_terms_row(db, level_id, sku)
    if row is None:
        return DomainError(CatalogError.PRODUCT_NOT_FOUND, f"No product with SKU {sku}.")
    visible = row["visible_skus"]
    if visible is not None and sku not in visible:
        return DomainError(
            IssuanceError.PRODUCT_NOT_VISIBLE, f"Product {sku} is not available to this account."
        )
    if row["status"] != "active":
        return DomainError(IssuanceError.PRODUCT_UNAVAILABLE, f"Product {sku} is not on sale.")
    pricing = pricing_from(row)
    return SaleTerms(
        product_id=row["product_id"],
        sku=row["sku"],
        unit_price=pricing.base_price,
        currency=row["currency"],
        pricing=pricing,
        has_overrides=row["has_overrides"],
    )


def below_cost_basis(sku: str) -> DomainError:
    # A batch dearer than this price arrived after the price was set.
    return DomainError(
        PricingError.PRICE_BELOW_COST_BASIS,
        f"{sku} cannot be sold at this price now: it is below the platform's cost. "
        "Nothing was issued or charged.",
    )
