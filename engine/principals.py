"""Who is calling: an operator (console, back office) or an agent's API key."""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from engine.auth import OPERATOR_TOKEN_PREFIX, hash_secret, secrets_match


@dataclass(frozen=True)
class Operator:
    token_id: int
    role: str

    @property
    def owner_label(self) -> str:
        return f"operator:{self.token_id}"


@dataclass(frozen=True)
class AgentKey:
    key_id: int
    agent_id: int
    level_id: int
    mode: str

    @property
    def owner_label(self) -> str:
        return f"agent:{self.agent_id}"


Principal = Operator | AgentKey

# Revoking a token or key takes effect within this many seconds in every worker.
CACHE_TTL_S = 10.0
_CACHE_MAX = 10_000


class PrincipalCache:
    """Authenticates bearer secrets against their stored hashes, with a short-lived cache
    so the hot path does not pay a PostgreSQL round trip per request."""

    def __init__(self, ttl_s: float = CACHE_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(self, pool: asyncpg.Pool, secret: str) -> Principal | None:
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await _lookup(pool, secret, digest)
        if len(self._entries) >= _CACHE_MAX:
            self._entries.clear()
        self._entries[digest] = (now + self._ttl_s, principal)
        return principal

    def clear(self) -> None:
        self._entries.clear()


async def _lookup(pool: asyncpg.Pool, secret: str, digest: bytes) -> Principal | None:
    if secret.startswith(OPERATOR_TOKEN_PREFIX) or not secret.startswith("kami_"):
        row = await pool.fetchrow(
            "SELECT id, role, token_hash FROM operator_tokens "
            "WHERE token_hash = $1 AND revoked_at IS NULL",
            digest,
        )
        if row is not None and secrets_match(secret, row["token_hash"]):
            return Operator(token_id=row["id"], role=row["role"])
        return None
    row = await pool.fetchrow(
        "SELECT k.id, k.agent_id, k.mode, k.secret_hash, a.level_id FROM api_keys k "
        "JOIN agents a ON a.id = k.agent_id "
        "WHERE k.secret_hash = $1 AND k.revoked_at IS NULL AND a.status = 'active'",
        digest,
    )
    if row is not None and secrets_match(secret, row["secret_hash"]):
        return AgentKey(
            key_id=row["id"], agent_id=row["agent_id"], level_id=row["level_id"], mode=row["mode"]
        )
    return None
