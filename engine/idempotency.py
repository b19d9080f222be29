"""Idempotency: a retry with the same key and request gets the first response, byte for byte.

The unique (owner, key) row is claimed before the work starts. A concurrent request with
the same key waits for the first to finish and answers the same; the same key with a
different request is a conflict. Failures that the client should retry (5xx) release the
claim, so the retry runs again; everything else is remembered for at least 24 hours.

The remembered response is sealed by the keyring's `Cipher` (the card keys' AES-256-GCM
envelope): responses carry API keys, signing secrets, lookup tokens and card keys, none of
which may sit in PostgreSQL in plaintext. The ciphertext is bound to the owner, the key and
the status, so a body moved to another row, or a status changed beside it, does not open.
The request hash is keyed too (`request_mac`). A record whose body cannot be opened
(tampered, another master key, or written before bodies were sealed) is answered
`idempotency_replay_unavailable`: the work is never run a second time under the same key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import asyncpg
import structlog

from engine._core import Cipher, CryptoError
from engine.errors import CommonError, DomainError
from engine.storage.db import Executor

log = structlog.get_logger(__name__)

RETENTION = timedelta(hours=24)
WAIT_FOR_FIRST_S = 15.0
_POLL_S = 0.01
# AAD context for sealed responses: a name no SKU can have (SKUs start with an alphanumeric).
_SEALED_CONTEXT = "__kami_idempotent_response__"
# The sealed plaintext is a str: a UTF-8 body (every JSON answer) is kept as text, anything
# else as base64, told apart by the first character.
_TEXT, _BASE64 = "t", "b"


class IdempotencyError(StrEnum):
    IN_PROGRESS = "idempotency_in_progress"
    REPLAY_UNAVAILABLE = "idempotency_replay_unavailable"


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes


def request_mac_key(fingerprint_key: bytes) -> bytes:
    """The key of `request_mac`, derived so that it is never the fingerprint key itself."""
    return hmac.new(fingerprint_key, b"kami idempotency request_hash v1", hashlib.sha256).digest()


def request_mac(mac_key: bytes, request_digest: bytes) -> bytes:
    # Keyed, like the card keys' fingerprints: some requests carry secrets (a card-key
    # import's codes), and a plain hash of a short one is found by trying candidates.
    return hmac.new(mac_key, request_digest, hashlib.sha256).digest()


def _context(owner: str, key: str) -> str:
    # Length-prefixed, so no two (owner, key) pairs share a context.
    return f"{_SEALED_CONTEXT}:{len(owner)}:{owner}:{key}"


def seal(cipher: Cipher, owner: str, key: str, status: int, body: bytes) -> bytes:
    try:
        plaintext = _TEXT + body.decode("utf-8")
    except UnicodeDecodeError:
        plaintext = _BASE64 + base64.b64encode(body).decode("ascii")
    return cipher.encrypt(_context(owner, key), status, plaintext)


def unseal(cipher: Cipher, owner: str, key: str, status: int, sealed: bytes) -> bytes:
    """The body `seal` was given. CryptoError if it does not open for this row."""
    plaintext = cipher.decrypt(_context(owner, key), status, sealed)
    if plaintext.startswith(_TEXT):
        return plaintext[1:].encode("utf-8")
    if plaintext.startswith(_BASE64):
        return base64.b64decode(plaintext[1:], validate=True)
    raise CryptoError("unknown sealed response format")


def _unavailable() -> DomainError:
    return DomainError(
        IdempotencyError.REPLAY_UNAVAILABLE,
        "The response first given for this Idempotency-Key can no longer be replayed; "
        "look the result up, or send the request with a new key.",
    )


async def claim(
    pool: asyncpg.Pool, cipher: Cipher, owner: str, key: str, request_hash: bytes
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
                "SELECT request_hash, status, response_sealed FROM idempotency_records "
                "WHERE owner = $1 AND key = $2",
                owner,
                key,
            )
        if row is None:
            continue  # released between our insert and select: try to claim again
        if not row["request_hash"]:
            raise _unavailable()  # written before migration 0016: nothing left to compare
        if row["request_hash"] != request_hash:
            raise DomainError(
                CommonError.IDEMPOTENCY_CONFLICT,
                "This Idempotency-Key was used with a different request.",
            )
        if row["status"] is not None:
            return _opened(cipher, owner, key, row["status"], row["response_sealed"])
        if time.monotonic() > deadline:
            raise DomainError(
                IdempotencyError.IN_PROGRESS,
                "A request with this Idempotency-Key is still being processed; retry later.",
                retry_after=1,
            )
        await asyncio.sleep(_POLL_S)


def _opened(
    cipher: Cipher, owner: str, key: str, status: int, sealed: bytes | None
) -> StoredResponse:
    if sealed is None:
        # Completed before responses were sealed (migration 0016 dropped the body).
        raise _unavailable()
    try:
        return StoredResponse(status, unseal(cipher, owner, key, status, sealed))
    except (CryptoError, ValueError):
        # Never the plaintext, nor the ciphertext: only which record it was.
        log.error("idempotent_response_unopenable", owner=owner, key=key)
        raise _unavailable() from None


async def complete(
    conn: Executor, cipher: Cipher, owner: str, key: str, status: int, body: bytes
) -> None:
    await conn.execute(
        "UPDATE idempotency_records SET status = $3, response_sealed = $4, completed_at = now() "
        "WHERE owner = $1 AND key = $2",
        owner,
        key,
        status,
        seal(cipher, owner, key, status, body),
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
