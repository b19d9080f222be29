"""HMAC-SHA256 request signing for the API keys that require it (docs/SIGNING.md).

A key that requires signatures gets a signing secret, separate from the bearer key: a
leaked `Authorization` header (a proxy log, a pasted curl line) is then not enough to
call the API, and a signed request cannot be altered or replayed. The server has to
recompute HMACs, so it cannot keep only a hash of the secret as it does for the key; it
keeps it sealed by the keyring's `Cipher` (the master key's envelope, as for card keys),
bound to the key's id, and opens it when the key is authenticated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from engine._core import Cipher
from engine.errors import DomainError
from engine.storage.db import Connection

SIGNING_SECRET_PREFIX = "kami_sig_"  # noqa: S105 - a prefix, not a secret
TIMESTAMP_HEADER = "X-Kami-Timestamp"
SIGNATURE_HEADER = "X-Kami-Signature"
# How far a request's timestamp may be from the server's clock, either way.
WINDOW_S = 300
# A signature is refused once its timestamp leaves the window, so remembering it for the
# whole window's width (past and future edge) is enough to refuse every replay.
REPLAY_TTL_S = 2 * WINDOW_S
# AAD for sealed signing secrets: a name no SKU can have (SKUs start with an alphanumeric).
_SEALED_SKU = "__kami_api_key_signing__"
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")


class SigningError(StrEnum):
    INVALID_SIGNATURE = "invalid_signature"
    SIGNATURE_EXPIRED = "signature_expired"
    SIGNATURE_REPLAYED = "signature_replayed"
    API_KEY_NOT_FOUND = "api_key_not_found"


def string_to_sign(method: str, target: str, timestamp: str, body: bytes) -> bytes:
    """`METHOD\\nPATH?QUERY\\nTIMESTAMP\\nsha256_hex(body)`, UTF-8."""
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{timestamp}\n{body_hash}".encode()


def sign(secret: str, method: str, target: str, timestamp: str, body: bytes) -> str:
    """The hex signature a client sends in `X-Kami-Signature`."""
    message = string_to_sign(method, target, timestamp, body)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def new_signing_secret() -> str:
    return SIGNING_SECRET_PREFIX + secrets.token_urlsafe(32)


def seal(cipher: Cipher, key_id: int, secret: str) -> bytes:
    return cipher.encrypt(_SEALED_SKU, key_id, secret)


def unseal(cipher: Cipher, key_id: int, sealed: bytes) -> bytes:
    """The secret's bytes, as the HMAC key. CryptoError if the ciphertext does not open
    (another key's row, another master key)."""
    return cipher.decrypt(_SEALED_SKU, key_id, sealed).encode()


def verify(
    secret: bytes | None,
    *,
    method: str,
    target: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
) -> str:
    """Check a request's signature; returns it in canonical (lower-case hex) form, the
    form to remember against replays. Raises DomainError with a SigningError code."""
    if timestamp is None or signature is None:
        raise DomainError(
            SigningError.INVALID_SIGNATURE,
            f"This API key requires signed requests: send {TIMESTAMP_HEADER} and "
            f"{SIGNATURE_HEADER}.",
        )
    if not _TIMESTAMP.match(timestamp) or not _SIGNATURE.match(signature):
        raise DomainError(
            SigningError.INVALID_SIGNATURE,
            f"{TIMESTAMP_HEADER} must be unix seconds and {SIGNATURE_HEADER} 64 hex digits.",
        )
    if abs(now - int(timestamp)) > WINDOW_S:
        raise DomainError(
            SigningError.SIGNATURE_EXPIRED,
            f"{TIMESTAMP_HEADER} is more than {WINDOW_S} seconds from the server's clock.",
        )
    if secret is None:
        # Signing is required but the secret did not open (logged where it was opened):
        # fail closed.
        raise DomainError(SigningError.INVALID_SIGNATURE, "The request signature does not match.")
    expected = hmac.new(
        secret, string_to_sign(method, target, timestamp, body), hashlib.sha256
    ).digest()
    # Compared as bytes, so an upper-case copy of a used signature is the same signature.
    if not hmac.compare_digest(expected, bytes.fromhex(signature)):
        raise DomainError(SigningError.INVALID_SIGNATURE, "The request signature does not match.")
    return expected.hex()


async def remember(redis: aioredis.Redis, namespace: str, key_id: int, signature: str) -> None:
    """Accept a verified signature once: a second use within the window is a replay."""
    first = await redis.set(f"{namespace}:sig:{key_id}:{signature}", 1, nx=True, ex=REPLAY_TTL_S)
    if not first:
        raise DomainError(
            SigningError.SIGNATURE_REPLAYED,
            "This signed request was already received; sign each request anew.",
        )


@dataclass(frozen=True)
class SigningState:
    key_id: int
    agent_id: int
    mode: str
    prefix: str
    require_signature: bool
    # Set only when this call created a secret: shown once, then never again.
    new_secret: str | None

    def __repr__(self) -> str:
        return f"SigningState(key_id={self.key_id}, require_signature={self.require_signature})"


async def configure(
    conn: Connection,
    cipher: Cipher,
    key_id: int,
    *,
    require_signature: bool,
    rotate: bool = False,
) -> SigningState:
    """Turn signing on or off for a key. Turning it on creates a secret if the key has
    none; `rotate` replaces it. Turning it off keeps the secret, so turning it back on
    does not need a new one handed out."""
    row = await conn.fetchrow(
        "SELECT id, agent_id, mode, prefix, signing_secret_sealed FROM api_keys "
        "WHERE id = $1 AND revoked_at IS NULL FOR UPDATE",
        key_id,
    )
    if row is None:
        raise DomainError(SigningError.API_KEY_NOT_FOUND, f"No active API key {key_id}.")
    new_secret: str | None = None
    sealed: bytes | None = row["signing_secret_sealed"]
    if rotate or (require_signature and sealed is None):
        new_secret = new_signing_secret()
        sealed = seal(cipher, key_id, new_secret)
    await conn.execute(
        "UPDATE api_keys SET require_signature = $2, signing_secret_sealed = $3 WHERE id = $1",
        key_id,
        require_signature,
        sealed,
    )
    return SigningState(
        key_id=key_id,
        agent_id=row["agent_id"],
        mode=row["mode"],
        prefix=row["prefix"],
        require_signature=require_signature,
        new_secret=new_secret,
    )
