"""Price resolution on the hot path: `TermsCache.price` (the level's price or discount,
quantity tiers, the cost floor; visibility) — the cached lookup every issuance makes, and
a cold resolution against a stand-in for the database row. Results are checked before
timing."""

import asyncio
from typing import Any

from engine.issuance.terms import TermsCache

ROW = {
    "product_id": 7,
    "sku": "SKU-1",
    "name": "月卡",
    "retail_price": 1990,
    "currency": "CNY",
    "status": "active",
    "level_id": 1,
    "visible_skus": None,
    "discount_bp": None,
    "level_price": 1500,
    "cost_basis": 800,
    "tier_quantities": [5, 10],
    "tier_prices": [1400, 1250],
    "has_overrides": False,
}
QUANTITY = 12
EXPECTED = (1250, 12 * 1250)  # the ≥10 tier
CALLS = 10_000


class FakeDb:
    async def fetchrow(self, *_args: Any) -> dict[str, Any]:
        return ROW


async def _price(cache: TermsCache, db: FakeDb) -> tuple[int, int]:
    _, found = await cache.price(db, 1, 42, "SKU-1", QUANTITY)  # type: ignore[arg-type]
    assert found.covers_cost_basis
    return found.unit_price, found.amount


def _run(benchmark: Any, many: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(many()) == EXPECTED
        benchmark.pedantic(lambda: loop.run_until_complete(many()), rounds=10, iterations=1)
    finally:
        loop.close()
    benchmark.extra_info["entries"] = CALLS
    benchmark.extra_info["entries_per_s"] = round(CALLS / benchmark.stats.stats.min)


def test_terms_cached(benchmark: Any) -> None:
    cache, db = TermsCache(ttl_s=3600), FakeDb()

    async def many() -> tuple[int, int]:
        result = (0, 0)
        for _ in range(CALLS):
            result = await _price(cache, db)
        return result

    _run(benchmark, many)


def test_terms_resolved(benchmark: Any) -> None:
    db = FakeDb()

    async def many() -> tuple[int, int]:
        result = (0, 0)
        for _ in range(CALLS):
            result = await _price(TermsCache(), db)
        return result

    _run(benchmark, many)
