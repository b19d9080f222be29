"""Requests per second per API key, shared by every worker through Redis.

A sliding window over two one-second buckets: the estimate is this second's count plus
the previous second's, weighted by how much of it the window still covers. It smooths the
burst a fixed window allows at each boundary (up to twice the limit). One Lua script call
reads both buckets and counts the request only if it is let through — one round trip, the
only one the check adds to a request, and atomic across workers. Only accepted requests
count, so a client somewhat over its limit still gets its limit's worth through instead of
locking itself out. Keys whose limit is 0 (none) pay nothing at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from engine.errors import CommonError, DomainError

# KEYS: this second's bucket, the previous one's. ARGV: the limit, the share of the
# previous second the window still covers. 1: counted and allowed; 0: refused.
_CHECK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
if current + 1 + previous * tonumber(ARGV[2]) > tonumber(ARGV[1]) then
    return 0
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 2)
return 1
"""


class RateLimiter:
    def __init__(
        self, redis: aioredis.Redis, namespace: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._namespace = namespace
        self._clock = clock
        self._check = redis.register_script(_CHECK)

    async def check(self, key_id: int, limit_per_s: int) -> None:
        """Let one request of `key_id` through, or raise `rate_limited` (with
        `retry_after`) past `limit_per_s`."""
        if limit_per_s <= 0:
            return
        now = self._clock()
        second = int(now)
        # One hash tag per key: both buckets in one cluster slot, so one script sees both.
        tag = f"{{{self._namespace}:rl:{key_id}}}"
        allowed = await self._check(
            keys=[f"{tag}:{second}", f"{tag}:{second - 1}"],
            args=[limit_per_s, repr(1.0 - (now - second))],
        )
        if not allowed:
            raise DomainError(
                CommonError.RATE_LIMITED,
                f"More than {limit_per_s} requests per second with this API key; slow down.",
                retry_after=1,  # the window moves on within the second
                limit_per_s=limit_per_s,
            )
