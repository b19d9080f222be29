"""Connection types shared by the storage functions of every area."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# What `pool.acquire()` yields and what `asyncpg.connect()` returns; both run queries the same.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
# Anything a single statement can run on: a connection, or the pool (one-shot acquire).
Executor: TypeAlias = Connection | asyncpg.Pool
