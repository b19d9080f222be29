"""The `skip_locked` baseline: the safe classic card-shop allocation. One transaction per
request: lock one available key with `FOR UPDATE SKIP LOCKED`, mark it issued, insert the
issuance. Its own schema (`bench_skip`) in the same PostgreSQL as Kami.

In-process: `take_one(conn, ...)`. Over HTTP: `create_app` (an ASGI factory; the DSN comes
from BENCH_SKIP_DSN), served the same way as Kami (granian or uvicorn, same workers).

It stores the codes in plaintext and returns them without decryption, and it checks no
API key, price or balance: every shortcut favours the baseline, so ratios against it are
conservative. Its worker freezes its startup objects out of garbage collection as Kami's
does (api/app.py), so neither pays full collections the other does not."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from fastapi import FastAPI, Header, HTTPException

SCHEMA = "bench_skip"

DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.card_keys (
    id bigserial PRIMARY KEY,
    sku text NOT NULL,
    code text NOT NULL,
    state text NOT NULL DEFAULT 'available',
    issued_at timestamptz
);
CREATE INDEX IF NOT EXISTS card_keys_available ON {SCHEMA}.card_keys (sku, id)
    WHERE state = 'available';
CREATE TABLE IF NOT EXISTS {SCHEMA}.issuances (
    id bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    card_key_id bigint NOT NULL UNIQUE REFERENCES {SCHEMA}.card_keys (id),
    sku text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

TAKE = f"""
UPDATE {SCHEMA}.card_keys SET state = 'issued', issued_at = now()
 WHERE id = (SELECT id FROM {SCHEMA}.card_keys
              WHERE sku = $1 AND state = 'available'
              ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING id, code
"""

INSERT = f"INSERT INTO {SCHEMA}.issuances (idempotency_key, card_key_id, sku) VALUES ($1, $2, $3)"


async def prepare(conn: asyncpg.Connection, sku: str, count: int) -> None:
    await conn.execute(DDL)
    await conn.execute(
        f"INSERT INTO {SCHEMA}.card_keys (sku, code) "
        "SELECT $1, $1 || '-' || g || '-' || md5(random()::text) FROM generate_series(1, $2) g",
        sku,
        count,
    )
    await conn.execute(f"ANALYZE {SCHEMA}.card_keys")


async def take_one(
    conn: asyncpg.Connection | PoolConnectionProxy[Any], sku: str, idempotency_key: str
) -> str | None:
    async with conn.transaction():
        row = await conn.fetchrow(TAKE, sku)
        if row is None:
            return None
        await conn.execute(INSERT, idempotency_key, row["id"], sku)
        return str(row["code"])


async def check(conn: asyncpg.Connection, sku: str) -> dict[str, int]:
    row = await conn.fetchrow(
        f"SELECT (SELECT count(*) FROM {SCHEMA}.issuances WHERE sku = $1) AS issuances, "
        f"(SELECT count(DISTINCT card_key_id) FROM {SCHEMA}.issuances WHERE sku = $1) AS keys, "
        f"(SELECT count(*) FROM {SCHEMA}.card_keys WHERE sku = $1 AND state = 'issued') AS issued",
        sku,
    )
    assert row is not None
    return {k: int(v) for k, v in row.items()}


def create_app() -> FastAPI:
    dsn = os.environ["BENCH_SKIP_DSN"]
    size = int(os.environ.get("BENCH_SKIP_POOL", "10"))
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state["db"] = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
        gc.freeze()
        yield
        gc.unfreeze()
        await state["db"].close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/issuances", status_code=201)
    async def issue(
        body: dict[str, Any], idempotency_key: str = Header(alias="Idempotency-Key")
    ) -> dict[str, Any]:
        sku = str(body["sku"])
        async with state["db"].acquire() as conn:
            code = await take_one(conn, sku, idempotency_key)
        if code is None:
            raise HTTPException(409, "out_of_stock")
        return {"sku": sku, "quantity": 1, "keys": [{"code": code}]}

    return app


def serve(server: str, port: int, workers: int) -> None:
    """Served exactly as `kami serve` serves Kami (api/cli.py `_serve`)."""
    if server == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        Granian(
            "bench.skip_locked:create_app",
            factory=True,
            interface=Interfaces.ASGI,
            address="127.0.0.1",
            port=port,
            workers=workers,
            log_access=False,
        ).serve()
    else:
        import uvicorn

        uvicorn.run(
            "bench.skip_locked:create_app",
            factory=True,
            host="127.0.0.1",
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_config=None,
        )


if __name__ == "__main__":
    import sys

    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
