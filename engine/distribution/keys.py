"""API key lifecycle: rate limits, rotation with a grace period, revocation.

Rotation hands out a successor and keeps the old key valid for a grace period, so a
client can deploy the new key before the old one stops: two active keys at most per
rotation chain (a key, and the successor that names it in `rotated_from`). A key whose
predecessor is still in its grace period cannot be rotated again until that ends or is
revoked — otherwise a chain could hold any number of live keys. Revocation is immediate.

Workers cache principals for `engine.principals.CACHE_TTL_S`; the worker that made the
change forgets the key at once, the others within that TTL. A grace period ends to the
second everywhere: the cached principal carries its `expires_at`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from engine._core import Cipher, CryptoError
from engine.auth import ApiKeyMode, hash_secret, new_api_key
from engine.errors import DomainError
from engine.signing import SigningError, new_signing_secret, seal, unseal
from engine.storage.db import Connection, Executor

DEFAULT_GRACE_S = 24 * 3600
MAX_GRACE_S = 30 * 24 * 3600


class ApiKeyError(StrEnum):
    ROTATION_IN_PROGRESS = "rotation_in_progress"


@dataclass(frozen=True)
class ApiKeyState:
    id: int
    agent_id: int
    mode: str
    prefix: str
    require_signature: bool
    rate_limit_per_s: int | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_from: int | None


@dataclass(frozen=True)
class Rotation:
    old: ApiKeyState
    new: ApiKeyState
    key: str
    # Set only when the successor needed a new signing secret (the old one did not open).
    signing_secret: str | None

    def __repr__(self) -> str:
        return f"Rotation(old={self.old.id}, new={self.new.id})"


_COLUMNS = (
    "id, agent_id, mode, prefix, require_signature, rate_limit_per_s, created_at, "
    "expires_at, revoked_at, rotated_from"
)


async def get_key(conn: Executor, key_id: int) -> ApiKeyState:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)  # noqa: S608
    if row is None:
        raise DomainError(SigningError.API_KEY_NOT_FOUND, f"No API key {key_id}.")
    return ApiKeyState(**dict(row))


def is_active(key: ApiKeyState, now: datetime) -> bool:
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


async def list_keys(
    conn: Executor, agent_id: int, *, limit: int, after: int | None
) -> list[ApiKeyState]:
    """An agent's keys by id, `limit` of them after the id `after`."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE agent_id = $1 "  # noqa: S608
        "AND ($2::bigint IS NULL OR id > $2) ORDER BY id LIMIT $3",
        agent_id,
        after,
        limit,
    )
    return [ApiKeyState(**dict(r)) for r in rows]


async def set_rate_limit(conn: Connection, key_id: int, rate_limit_per_s: int | None) -> None:
    """Requests per second for the key; None: back to the deployment's default."""
    updated = await conn.fetchval(
        "UPDATE api_keys SET rate_limit_per_s = $2 WHERE id = $1 AND revoked_at IS NULL "
        "RETURNING id",
        key_id,
        rate_limit_per_s,
    )
    if updated is None:
        raise DomainError(SigningError.API_KEY_NOT_FOUND, f"No active API key {key_id}.")


async def rotate(
    conn: Connection, cipher: Cipher, key_id: int, *, grace_s: int, now: datetime
) -> Rotation:
    """Create the key's successor (same agent, mode, limits and signing secret); the old
    key stays valid `grace_s` more seconds. In the caller's transaction."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, signing_secret_sealed FROM api_keys WHERE id = $1 FOR UPDATE",  # noqa: S608
        key_id,
    )
    if row is None:
        raise DomainError(SigningError.API_KEY_NOT_FOUND, f"No API key {key_id}.")
    old = ApiKeyState(**{k: v for k, v in row.items() if k != "signing_secret_sealed"})
    if not is_active(old, now):
        raise DomainError(SigningError.API_KEY_NOT_FOUND, f"No active API key {key_id}.")
    if await conn.fetchval("SELECT 1 FROM api_keys WHERE rotated_from = $1", key_id):
        raise DomainError(
            ApiKeyError.ROTATION_IN_PROGRESS,
            f"API key {key_id} was rotated already; rotate its successor instead.",
        )
    if old.rotated_from is not None:
        predecessor = await get_key(conn, old.rotated_from)
        if is_active(predecessor, now):
            raise DomainError(
                ApiKeyError.ROTATION_IN_PROGRESS,
                f"API key {predecessor.id}, which {key_id} replaced, is still in its grace "
                "period: revoke it first, or wait until it expires.",
                active_key_id=predecessor.id,
            )
    mode = ApiKeyMode(old.mode)
    key = new_api_key(mode)
    prefix = key[: len(f"kami_{mode.value}_") + 6]
    new_id: int = await conn.fetchval(
        "INSERT INTO api_keys (agent_id, mode, prefix, secret_hash, rate_limit_per_s, "
        "rotated_from) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        old.agent_id,
        mode.value,
        prefix,
        hash_secret(key),
        old.rate_limit_per_s,
        key_id,
    )
    signing_secret: str | None = None
    sealed: bytes | None = row["signing_secret_sealed"]
    if sealed is not None:
        # The client keeps signing with the secret it has: only the bearer key changes.
        try:
            secret = unseal(cipher, key_id, sealed).decode()
        except CryptoError:
            secret = signing_secret = new_signing_secret()
        await conn.execute(
            "UPDATE api_keys SET signing_secret_sealed = $2, require_signature = $3 WHERE id = $1",
            new_id,
            seal(cipher, new_id, secret),
            old.require_signature,
        )
    await conn.execute(
        "UPDATE api_keys SET expires_at = $2 WHERE id = $1",
        key_id,
        now + timedelta(seconds=grace_s),
    )
    return Rotation(
        old=await get_key(conn, key_id),
        new=await get_key(conn, new_id),
        key=key,
        signing_secret=signing_secret,
    )


async def revoke(conn: Connection, key_id: int, *, now: datetime) -> ApiKeyState:
    """Refuse the key from now on (every worker within the principal cache's TTL). A key
    revoked already stays as it was."""
    await conn.execute(
        "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL", key_id, now
    )
    return await get_key(conn, key_id)
