"""Pure-ASGI middleware: request ids, access logs and HTTP metrics in one pass.

Written against raw ASGI rather than `BaseHTTPMiddleware` because it sits on the issuance
hot path: no extra task, no body buffering.
"""

from __future__ import annotations

import itertools
import os
import re
import time

import orjson
import structlog
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = structlog.get_logger("kami.access")

REQUEST_ID_HEADER = b"x-request-id"
# A caller's id is kept only if it is short and harmless in logs and headers.
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_UNMATCHED_ROUTE = "<unmatched>"


class RequestContext:
    """One request's id, clock and outcome: bound to the log context while it runs, then
    counted, timed and logged once. The middleware below and the issuance hot path
    (api.routers.issuance.IssuanceHotPath) share it."""

    __slots__ = ("encoded_id", "request_id", "scope", "started", "status")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.request_id = _incoming_request_id(scope) or _REQUEST_IDS.new()
        scope.setdefault("state", {})["request_id"] = self.request_id
        self.encoded_id = self.request_id.encode()
        self.status = 500
        self.started = time.perf_counter()
        structlog.contextvars.bind_contextvars(request_id=self.request_id)

    def sender(self, send: Send) -> Send:
        """`send`, adding the request id header and noting the status."""

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, self.encoded_id))
                message["headers"] = headers
            await send(message)

        return send_with_id

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.started
        route = self.scope.get("route")
        template = getattr(route, "path", None) or _UNMATCHED_ROUTE
        method = self.scope["method"]
        HTTP_REQUESTS.labels(method, template, str(self.status)).inc()
        HTTP_LATENCY.labels(method, template).observe(elapsed)
        log.info(
            "request",
            method=method,
            route=template,
            status=self.status,
            duration_ms=round(elapsed * 1000, 3),
        )
        structlog.contextvars.unbind_contextvars("request_id")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(scope)
        try:
            await self.app(scope, receive, context.sender(send))
        finally:
            context.finish()


class _RequestIds:
    """Ids only need to be unique: a random prefix per process and a counter are, and
    cost a fraction of a uuid4 on the hot path. A forked worker draws its own prefix."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_REQUEST_IDS = _RequestIds()
os.register_at_fork(after_in_child=_REQUEST_IDS.reseed)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            return value.decode() if _VALID_REQUEST_ID.match(value) else None
    return None


class BodyLimitMiddleware:
    """Refuses request bodies over a size limit with 413, before they are buffered: by
    Content-Length when given, else by counting the bytes as they arrive."""

    def __init__(self, app: ASGIApp, *, json_limit: int, upload_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"")
        limit = self.upload_limit if content_type.startswith(b"multipart/") else self.json_limit
        if declared_too_large(headers, limit):
            await too_large(send, limit)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await too_large(send, limit)


def declared_too_large(headers: dict[bytes, bytes], limit: int) -> bool:
    declared = headers.get(b"content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refused with BodyTooLarge if its Content-Length is over
    `limit` bytes, or once more than that has arrived; ClientDisconnect if the client
    leaves before the end of it."""
    if declared_too_large(dict(scope["headers"]), limit):
        raise BodyTooLarge
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # The client went away mid-body: a truncated body must not be acted on.
            raise ClientDisconnect
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BodyTooLarge(Exception):
    pass


async def too_large(send: Send, limit: int) -> None:
    body = orjson.dumps(
        {
            "type": "https://kami.dev/problems/payload-too-large",
            "title": "Content Too Large",
            "status": 413,
            "detail": f"The request body is larger than {limit} bytes.",
            "code": "payload_too_large",
        }
    )
    await send_whole(send, 413, body, b"application/problem+json")


async def send_whole(
    send: Send, status: int, body: bytes, content_type: bytes, *extra: tuple[bytes, bytes]
) -> None:
    """Send a complete response in two ASGI messages, without building a Response."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
