"""Operations endpoints: liveness, readiness, metrics."""

from __future__ import annotations

import asyncpg
from fastapi import APIRouter
from starlette.responses import Response

from api.deps import RuntimeDep
from api.problems import problem
from engine import EngineError
from engine.errors import CommonError
from engine.metrics import STOCK_SKU_LIMIT, render
from engine.runtime import Runtime

router = APIRouter(tags=["ops"])


@router.get("/livez", summary="The process is running")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="PostgreSQL and Redis answer",
    response_model=None,
    responses={503: {"description": "A store does not answer"}},
)
async def readyz(runtime: RuntimeDep) -> Response | dict[str, object]:
    checks = await runtime.check()
    if all(state == "ok" for state in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem(
        503,
        CommonError.UNAVAILABLE,
        "A data store does not answer.",
        headers={"Retry-After": "1"},
        checks=checks,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(
        render(await _pool_stock(runtime)), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


async def _pool_stock(runtime: Runtime) -> dict[str, tuple[int, int, int]]:
    """Stock per active SKU from Redis; a scrape during a Redis outage still answers."""
    try:
        skus = await runtime.db.fetch(
            "SELECT sku FROM products WHERE status = 'active' ORDER BY sku LIMIT $1",
            STOCK_SKU_LIMIT,
        )
        return {row["sku"]: await runtime.pool.stock(row["sku"]) for row in skus}
    except (EngineError, OSError, asyncpg.PostgresError):
        return {}
