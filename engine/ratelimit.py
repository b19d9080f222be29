"""Requests per second per API key, shared by every worker through Redis.

A sliding window over two one-second buckets: the estimate is this second's count plus
the previous second's, weighted by how much of it the window still covers. It smooths the
burst a fixed window allows at each boundary (up to twice the limit) at no extra cost: the
increment and the read of the previous bucket are one pipelined round trip, the only one
the check adds to a request. Keys whose limit is 0 (none) pay nothing at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from engine.errors import CommonError, DomainError


class RateLimiter:
    def __init__(
        self, redis: aioredis.Redis, namespace: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = redis
        self._namespace = namespace
        self._clock = clock

    async def check(self, key_id: int, limit_per_s: int) -> None:
        """Count one request of `key_id`; raise `rate_limited` (with `retry_after`) past
        `limit_per_s`. Refused requests count too, so hammering does not earn a slot."""
        if limit_per_s <= 0:
            return
        now = self._clock()
        second = int(now)
        base = f"{self._namespace}:rl:{key_id}:"
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(base + str(second))
        # Kept for the next second's estimate, then gone.
        pipe.expire(base + str(second), 2)
        pipe.get(base + str(second - 1))
        current, _, previous = await pipe.execute()
        covered = 1.0 - (now - second)
        estimate = int(current) + int(previous or 0) * covered
        if estimate > limit_per_s:
            raise DomainError(
                CommonError.RATE_LIMITED,
                f"More than {limit_per_s} requests per second with this API key; slow down.",
                retry_after=1,  # the window moves on within the second
                limit_per_s=limit_per_s,
            )
