"""Idempotency: a retry with the same key and request gets the first response, byte for byte.

The unique (owner, key) row is claimed before the work starts. A concurrent request with
the same key waits for the first to finish and answers the same; the same key with a
different request is a conflict. Failures that the client should retry (5xx) release the
claim, so the retry runs again; everything else is remembered for at least 24 hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import asyncpg

from engine.errors import CommonError, DomainError
from engine.storage.db import Executor

RETENTION = timedelta(hours=24)
WAIT_FOR_FIRST_S = 15.0
_POLL_S = 0.01


class IdempotencyError(StrEnum):
    IN_PROGRESS = "idempotency_in_progress"


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes


async def claim(
    pool: asyncpg.Pool, owner: str, key: str, request_hash: bytes
) -> StoredResponse | None:
    """Claim (owner, key) for this request, or return the response already recorded.

    None means the caller owns the key now and must `complete` or `release` it.
    """
    deadline = time.monotonic() + WAIT_FOR_FIRST_S
    while True:
        async with pool.acquire() as conn:
            claimed = await conn.fetchval(
                "INSERT INTO idempotency_records (owner, key, request_hash) VALUES ($1, $2, $3) "
                "ON CONFLICT (owner, key) DO NOTHING RETURNING true",
                owner,
                key,
                request_hash,
            )
            if claimed:
                return None
            row = await conn.fetchrow(
                "SELECT request_hash, status, response FROM idempotency_records "
                "WHERE owner = $1 AND key = $2",
                owner,
                key,
            )
        if row is None:
            continue  # released between our insert and select: try to claim again
        if row["request_hash"] != request_hash:
            raise DomainError(
                CommonError.IDEMPOTENCY_CONFLICT,
                "This Idempotency-Key was used with a different request.",
            )
        if row["status"] is not None:
            return StoredResponse(row["status"], row["response"])
        if time.monotonic() > deadline:
            raise DomainError(
                IdempotencyError.IN_PROGRESS,
                "A request with this Idempotency-Key is still being processed; retry later.",
                retry_after=1,
            )
        await asyncio.sleep(_POLL_S)


async def complete(conn: Executor, owner: str, key: str, status: int, body: bytes) -> None:
    await conn.execute(
        "UPDATE idempotency_records SET status = $3, response = $4, completed_at = now() "
        "WHERE owner = $1 AND key = $2",
        owner,
        key,
        status,
        body,
    )


async def release(pool: asyncpg.Pool, owner: str, key: str) -> None:
    await pool.execute(
        "DELETE FROM idempotency_records WHERE owner = $1 AND key = $2 AND status IS NULL",
        owner,
        key,
    )


async def sweep(pool: asyncpg.Pool, retention: timedelta = RETENTION) -> int:
    status = await pool.execute(
        "DELETE FROM idempotency_records WHERE created_at < now() - $1::interval", retention
    )
    return int(status.split()[-1])


async def sweep_forever(pool: asyncpg.Pool, interval_s: float = 600.0) -> None:
    """Forget idempotency records past the retention, every `interval_s`."""
    while True:
        # A failed pass is caught up by the next; nothing depends on an early sweep.
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await sweep(pool)
        await asyncio.sleep(interval_s)
