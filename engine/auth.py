"""Operator tokens and API keys: generated from the OS RNG, stored only as SHA-256 hashes.

A token is looked up by its hash (a unique index), then compared in constant time; the
plaintext is shown once, at creation, and exists nowhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from enum import StrEnum

from engine.storage.db import Connection

OPERATOR_TOKEN_PREFIX = "kami_admin_"  # noqa: S105 - a prefix, not a secret


class ApiKeyMode(StrEnum):
    LIVE = "live"
    TEST = "test"


def hash_secret(secret: str) -> bytes:
    # Tokens carry 256 bits of entropy, so an unsalted fast hash is enough: there is
    # nothing to brute-force, and lookups must stay cheap on the hot path.
    return hashlib.sha256(secret.encode()).digest()


def secrets_match(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def new_operator_token() -> str:
    return OPERATOR_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_api_key(mode: ApiKeyMode) -> str:
    return f"kami_{mode.value}_{secrets.token_urlsafe(32)}"


async def ensure_owner_token(conn: Connection, configured: str | None) -> str | None:
    """Create the owner's token on first start.

    The configured `KAMI_ADMIN_TOKEN` becomes the owner's token; without one, a token is
    generated and returned so the caller can print it, once. Returns None when an owner
    already exists or the configured token was used.
    """
    async with conn.transaction():
        # Serialise concurrent first starts: only one of them creates the owner.
        await conn.execute("LOCK TABLE operator_tokens IN SHARE ROW EXCLUSIVE MODE")
        has_owner = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM operator_tokens WHERE role = 'owner' "
            "AND revoked_at IS NULL)"
        )
        if has_owner:
            return None
        token = configured or new_operator_token()
        await conn.execute(
            "INSERT INTO operator_tokens (name, role, token_hash) VALUES ('owner', 'owner', $1)",
            hash_secret(token),
        )
        await conn.execute(
            "INSERT INTO audit_log (actor, action, subject, detail) "
            "VALUES ('system', 'operator_token.created', 'operator:owner', $1::jsonb)",
            json.dumps({"source": "KAMI_ADMIN_TOKEN" if configured else "generated"}),
        )
    return None if configured else token
