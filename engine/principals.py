"""Who is calling: an operator (console, back office) or an agent's API key."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import structlog

from engine._core import Cipher, CryptoError
from engine.auth import OPERATOR_TOKEN_PREFIX, hash_secret, secrets_match
from engine.signing import unseal

log = structlog.get_logger(__name__)


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
    require_signature: bool = False
    # Requests per second; None: the deployment's default (KAMI_API_KEY_RATE_LIMIT_PER_S).
    rate_limit_per_s: int | None = None
    # Unix time after which the key is refused (a rotated key's grace period ends).
    expires_at: float | None = None
    # The opened signing secret (docs/SIGNING.md), kept with the cached principal so a
    # signed request costs no extra lookup; never in a repr, so never in a log line.
    signing_secret: bytes | None = field(default=None, repr=False, compare=False)

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

    def __init__(
        self,
        ttl_s: float = CACHE_TTL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(
        self, pool: asyncpg.Pool, secret: str, cipher: Cipher | None = None
    ) -> Principal | None:
        """`cipher` opens the signing secrets of keys that require signatures; without it
        such a key authenticates with no secret, so none of its requests verifies."""
        digest = hash_secret(secret)
        now = self._clock()
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            return self._unexpired(cached[1])
        principal = await _lookup(pool, secret, digest, cipher, self._wall_clock())
        if len(self._entries) >= _CACHE_MAX:
            self._entries.clear()
        self._entries[digest] = (now + self._ttl_s, principal)
        return principal

    def _unexpired(self, principal: Principal | None) -> Principal | None:
        # A rotated key's grace period ends to the second, cached or not.
        if (
            isinstance(principal, AgentKey)
            and principal.expires_at is not None
            and self._wall_clock() >= principal.expires_at
        ):
            return None
        return principal

    def clear(self) -> None:
        self._entries.clear()

    def forget_agent(self, agent_id: int) -> None:
        """Drop every cached key of an agent, so its suspension (or reactivation) applies
        at once here. A suspended agent's keys are cached as refusals, which name no
        agent: every refusal goes too (they cost one lookup each to learn again)."""
        stale = [
            digest
            for digest, (_, principal) in self._entries.items()
            if principal is None
            or (isinstance(principal, AgentKey) and principal.agent_id == agent_id)
        ]
        for digest in stale:
            del self._entries[digest]

    def forget_key(self, key_id: int) -> None:
        """Drop an API key's cached principal, so a change to it applies at once here."""
        stale = [
            digest
            for digest, (_, principal) in self._entries.items()
            if isinstance(principal, AgentKey) and principal.key_id == key_id
        ]
        for digest in stale:
            del self._entries[digest]


async def _lookup(
    pool: asyncpg.Pool, secret: str, digest: bytes, cipher: Cipher | None, now: float
) -> Principal | None:
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
        "SELECT k.id, k.agent_id, k.mode, k.secret_hash, k.require_signature, "
        "k.signing_secret_sealed, k.rate_limit_per_s, k.expires_at, a.level_id FROM api_keys k "
        "JOIN agents a ON a.id = k.agent_id "
        "WHERE k.secret_hash = $1 AND k.revoked_at IS NULL AND a.status = 'active' "
        "AND (k.expires_at IS NULL OR k.expires_at > $2)",
        digest,
        datetime.fromtimestamp(now, UTC),
    )
    if row is None or not secrets_match(secret, row["secret_hash"]):
        return None
    signing_secret = None
    if row["require_signature"]:
        signing_secret = _open_signing_secret(cipher, row["id"], row["signing_secret_sealed"])
    return AgentKey(
        key_id=row["id"],
        agent_id=row["agent_id"],
        level_id=row["level_id"],
        mode=row["mode"],
        require_signature=row["require_signature"],
        rate_limit_per_s=row["rate_limit_per_s"],
        expires_at=row["expires_at"].timestamp() if row["expires_at"] is not None else None,
        signing_secret=signing_secret,
    )


def _open_signing_secret(cipher: Cipher | None, key_id: int, sealed: bytes) -> bytes | None:
    if cipher is None:
        return None
    try:
        return unseal(cipher, key_id, sealed)
    except CryptoError:
        # Another master key, or a ciphertext moved from another row: the key stays
        # unusable (fail closed) and an operator hears of it.
        log.error("signing_secret_unopenable", key_id=key_id)
        return None
