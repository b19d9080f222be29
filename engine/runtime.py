"""The connections a process holds: opened after a server forks its workers, closed on exit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
import structlog

from engine._core import Pool
from engine.settings import Settings, decode_master_key

log = structlog.get_logger(__name__)

CHECK_TIMEOUT_S = 1.0


class StoreUnreachable(RuntimeError):
    """PostgreSQL or Redis did not answer; the message names which and why, without secrets."""


@dataclass
class Runtime:
    settings: Settings
    db: asyncpg.Pool
    redis: aioredis.Redis
    pool: Pool

    @property
    def master_key(self) -> bytes:
        if self.settings.master_key is None:
            raise StoreUnreachable("KAMI_MASTER_KEY is not set")
        return decode_master_key(self.settings.master_key.get_secret_value())

    @classmethod
    async def open(cls, settings: Settings, *, db_pool_size: int = 10) -> Runtime:
        database_url, redis_url = require_urls(settings)
        try:
            db = await asyncpg.create_pool(
                database_url, min_size=1, max_size=db_pool_size, command_timeout=30
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise StoreUnreachable(f"cannot connect to PostgreSQL: {describe(exc)}") from exc
        client = aioredis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        # The Rust pool connects lazily, on first use, inside this (already forked) worker.
        pool = Pool(redis_url, namespace=settings.redis_namespace)
        return cls(settings=settings, db=db, redis=client, pool=pool)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.db.close()

    async def check(self) -> dict[str, str]:
        """Ask both stores to answer within a second; report each one's state."""
        return {
            "postgres": await _check(self._ping_postgres()),
            "redis": await _check(self._ping_redis()),
        }

    async def _ping_postgres(self) -> None:
        async with self.db.acquire(timeout=CHECK_TIMEOUT_S) as conn:
            await conn.fetchval("SELECT 1")

    async def _ping_redis(self) -> None:
        await self.redis.ping()


async def _check(probe: object) -> str:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT_S)  # type: ignore[arg-type]
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


def require_urls(settings: Settings) -> tuple[str, str]:
    if settings.database_url is None or settings.redis_url is None:
        raise StoreUnreachable(
            "KAMI_DATABASE_URL and KAMI_REDIS_URL must be set here (kami serve sets them "
            "for its workers when it starts the embedded stores)"
        )
    return settings.database_url.get_secret_value(), settings.redis_url.get_secret_value()


def describe(exc: BaseException) -> str:
    """A one-line reason for a connection failure that carries no credentials."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
