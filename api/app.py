"""The FastAPI application factory. Connections open in the lifespan, i.e. in each worker
after the server has forked, never at import."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import Receive, Scope, Send

from api import problems
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.routers import (
    agents_admin,
    catalog,
    distribution,
    finance,
    issuance,
    issuance_refunds,
    keys,
    ledger,
    levels,
    me_finance,
    notify,
    ops,
    orders,
    promoters,
    stores,
)
from api.schemas import PROBLEM_RESPONSES
from engine import __version__, idempotency
from engine.crypto.keyring import load_keyring
from engine.distribution.upgrades import upgrades_forever
from engine.issuance.reconciler import Reconciler
from engine.issuance.service import IssuanceService
from engine.ledger.commissions import release_forever
from engine.logging import configure as configure_logging
from engine.metrics import GC_PAUSES
from engine.notify.worker import OutboxWorker
from engine.orders.service import OrderService
from engine.payments.registry import build_providers
from engine.principals import PrincipalCache
from engine.ratelimit import RateLimiter
from engine.runtime import Runtime
from engine.settings import Settings

log = structlog.get_logger(__name__)

# 200,000 codes of JSON fit in 32 MiB; files stream to disk, but not without bound.
JSON_BODY_LIMIT = 32 << 20
UPLOAD_BODY_LIMIT = 512 << 20
# An issuance request is a few hundred bytes; its hot path reads no more than this.
ISSUANCE_BODY_LIMIT = 64 << 10

DESCRIPTION = """\
Kami issues card keys (卡密), links and top-ups exactly once, durably, in milliseconds.

Errors are RFC 9457 `application/problem+json` documents with a stable `code`.
Mutating calls accept an `Idempotency-Key` header.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.open(settings)
        app.state.runtime = runtime
        app.state.principals = PrincipalCache()
        app.state.rate_limiter = RateLimiter(runtime.redis, settings.redis_namespace)
        async with runtime.db.acquire() as conn:
            app.state.keyring = await load_keyring(conn, runtime.master_key)
        app.state.issuance = IssuanceService(runtime.db, runtime.pool, app.state.keyring)
        app.state.orders = OrderService(
            runtime.db, runtime.pool, app.state.keyring, build_providers(settings), settings
        )
        background = [
            asyncio.create_task(Reconciler(runtime.db, runtime.pool).run_forever()),
            asyncio.create_task(idempotency.sweep_forever(runtime.db)),
            asyncio.create_task(OutboxWorker(runtime.db, settings).run_forever()),
            asyncio.create_task(app.state.orders.sweep_forever()),
            asyncio.create_task(release_forever(runtime.db)),
            asyncio.create_task(upgrades_forever(runtime.db, settings.agent_upgrade_interval_s)),
        ]
        log.info("worker_started", pid=os.getpid(), version=__version__)
        # The ~130k objects of a started worker (modules, routes, models, caches) live as
        # long as it does, yet every full collection walked all of them: 30-90 ms with the
        # event loop stopped, the largest pause in a flash sale's tail. Frozen, they are
        # skipped; what requests allocate later is collected as before. The pauses that
        # remain are exported as kami_gc_pause_seconds.
        gc.freeze()
        GC_PAUSES.watch()
        try:
            yield
        finally:
            # Back to collectable: the worker is stopping, or a test's app is done with.
            gc.unfreeze()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await app.state.issuance.close()
            await runtime.close()

    app = KamiApp(
        title="Kami",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    problems.install(app)
    app.include_router(ops.router)
    for router in (
        catalog.router,
        distribution.router,
        levels.router,
        ledger.router,
        issuance.router,
        issuance_refunds.router,
        notify.router,
        orders.router,
        finance.router,
        me_finance.router,
        keys.router,
        promoters.router,
        agents_admin.router,
        stores.router,
    ):
        app.include_router(router, responses=PROBLEM_RESPONSES)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # Outermost last: request ids and metrics see the 413s too.
    app.add_middleware(
        BodyLimitMiddleware, json_limit=JSON_BODY_LIMIT, upload_limit=UPLOAD_BODY_LIMIT
    )
    app.add_middleware(RequestContextMiddleware)
    app.hot_path = issuance.IssuanceHotPath(app, json_limit=ISSUANCE_BODY_LIMIT)
    return app


class KamiApp(FastAPI):
    """The application, with `POST /v1/issuances` dispatched before the framework's stack
    (api.routers.issuance.IssuanceHotPath); every other request goes through FastAPI."""

    hot_path: issuance.IssuanceHotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot_path = self.hot_path
        if hot_path is not None and hot_path.serves(scope):
            await hot_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema, with error bodies declared as application/problem+json (as
    they are sent) and FastAPI's own validation-error shape replaced by ours."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    response["content"] = {"application/problem+json": content["application/json"]}
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = schema
    return schema
