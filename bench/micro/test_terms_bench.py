"""Price resolution on the hot path: `TermsCache.terms` (level price, else product price;
visibility) — the cached lookup every issuance makes, and a cold resolution against a
stand-in for the database row. Results are checked before timing."""

import asyncio
from typing import Any

from engine.issuance.terms import SaleTerms, TermsCache

ROW = {
    "id": 7,
    "sku": "SKU-1",
    "price": 1990,
    "currency": "CNY",
    "status": "active",
    "visible_skus": None,
    "level_price": 1500,
}
EXPECTED = SaleTerms(product_id=7, sku="SKU-1", unit_price=1500, currency="CNY")
CALLS = 10_000


class FakeDb:
    async def fetchrow(self, *_args: Any) -> dict[str, Any]:
        return ROW


def test_terms_cached(benchmark: Any) -> None:
    cache, db = TermsCache(ttl_s=3600), FakeDb()

    async def many() -> SaleTerms:
        terms = EXPECTED
        for _ in range(CALLS):
            terms = await cache.terms(db, 1, "SKU-1")  # type: ignore[arg-type]
        return terms

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(many()) == EXPECTED
        benchmark.pedantic(lambda: loop.run_until_complete(many()), rounds=10, iterations=1)
    finally:
        loop.close()
    benchmark.extra_info["entries"] = CALLS
    benchmark.extra_info["entries_per_s"] = round(CALLS / benchmark.stats.stats.min)


def test_terms_resolved(benchmark: Any) -> None:
    db = FakeDb()

    async def many() -> SaleTerms:
        terms = EXPECTED
        for _ in range(CALLS):
            terms = await TermsCache().terms(db, 1, "SKU-1")  # type: ignore[arg-type]
        return terms

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(many()) == EXPECTED
        benchmark.pedantic(lambda: loop.run_until_complete(many()), rounds=10, iterations=1)
    finally:
        loop.close()
    benchmark.extra_info["entries"] = CALLS
    benchmark.extra_info["entries_per_s"] = round(CALLS / benchmark.stats.stats.min)
