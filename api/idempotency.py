"""The Idempotency-Key contract of API.md, applied around a route's work."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from engine import audit, idempotency
from engine.errors import CommonError, DomainError
from engine.principals import Operator
from engine.runtime import Runtime
from engine.storage.db import Connection

HEADER = "Idempotency-Key"
_VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_REPLAYED = "Idempotent-Replayed"


def request_key(request: Request, *, required: bool) -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        if required:
            raise DomainError(
                CommonError.IDEMPOTENCY_KEY_REQUIRED, f"This call requires an {HEADER} header."
            )
        return None
    if not _VALID_KEY.match(key):
        raise DomainError(
            CommonError.INVALID_REQUEST,
            f"{HEADER} must be 1 to 255 printable ASCII characters.",
        )
    return key


def request_hash(request: Request, payload: object) -> bytes:
    return request_hash_of(request.method, request.url.path, payload)


def request_hash_of(method: str, path: str, payload: object) -> bytes:
    # The parsed body, canonically encoded: whitespace or key order in the JSON a client
    # sends on a retry does not make it a different request.
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).digest()


def json_response(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def run_idempotent(
    request: Request,
    runtime: Runtime,
    owner: str,
    payload: object,
    work: Callable[[], Awaitable[Response]],
    *,
    required: bool = False,
) -> Response:
    """Run `work` at most once per (owner, Idempotency-Key); replay its response after."""
    key = request_key(request, required=required)
    if key is None:
        return await work()
    # Responses are kept sealed: many carry secrets (API keys, signing secrets, card keys).
    keyring = request.app.state.keyring
    cipher = keyring.cipher
    digest = idempotency.request_mac(
        idempotency.request_mac_key(keyring.fingerprint_key), request_hash(request, payload)
    )
    stored = await idempotency.claim(runtime.db, cipher, owner, key, digest)
    if stored is not None:
        return Response(
            stored.body,
            status_code=stored.status,
            media_type=_media_type(stored.status),
            headers={_REPLAYED: "true"},
        )
    try:
        response = await work()
    except DomainError as exc:
        from api.problems import problem_for

        response = problem_for(exc)
        if response.status_code >= 500:
            await idempotency.release(runtime.db, owner, key)
            return response
    except BaseException:
        await idempotency.release(runtime.db, owner, key)
        raise
    await idempotency.complete(
        runtime.db, cipher, owner, key, response.status_code, bytes(response.body)
    )
    return response


def _media_type(status: int) -> str:
    return "application/json" if status < 400 else "application/problem+json"


# What an operator write returns from inside its transaction: the response body, the
# audited subject and the audit detail.
Written = tuple[dict[str, Any], str, dict[str, Any] | None]


async def operator_write(
    request: Request,
    runtime: Runtime,
    operator: Operator,
    *,
    action: str,
    payload: object,
    work: Callable[[Connection], Awaitable[Written]],
) -> Response:
    """An idempotent operator write: `work` and its audit record in one transaction, then
    `201` with the body `work` returned."""

    async def run() -> Response:
        async with runtime.db.acquire() as conn, conn.transaction():
            body, subject, detail = await work(conn)
            await audit.record(conn, operator.owner_label, action, subject, detail)
        return json_response(201, body)

    return await run_idempotent(request, runtime, operator.owner_label, payload, run)
