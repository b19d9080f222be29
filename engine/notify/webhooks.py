"""Webhooks signed per Standard Webhooks (https://www.standardwebhooks.com).

The body is `{"type", "timestamp", "data"}`; the headers `webhook-id` (stable across
retries, so receivers can drop duplicates), `webhook-timestamp` (this attempt, so the
signature is always fresh enough for a receiver's replay window) and `webhook-signature`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from engine import __version__


@dataclass(frozen=True)
class SignedRequest:
    body: bytes
    headers: dict[str, str]


def sign(
    *,
    secret: str,
    message_id: str,
    event_type: str,
    occurred_at: datetime,
    data: dict[str, Any],
    now: datetime | None = None,
) -> SignedRequest:
    body = orjson.dumps(
        {
            "type": event_type,
            "timestamp": occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "data": data,
        }
    )
    attempt_at = (now or datetime.now(UTC)).astimezone(UTC)
    signature = Webhook(secret).sign(message_id, attempt_at, body.decode())
    return SignedRequest(
        body=body,
        headers={
            "content-type": "application/json",
            "user-agent": f"Kami-Webhooks/{__version__}",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(attempt_at.timestamp())),
            "webhook-signature": signature,
        },
    )


class DeliveryFailed(Exception):
    """The receiver did not take the message. `reason` is short and safe to store: a
    status code or an exception type, never the URL (it may carry credentials)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def deliver(client: httpx.AsyncClient, url: str, request: SignedRequest) -> int:
    """POST once; return the 2xx status, or raise DeliveryFailed."""
    try:
        # Streamed and never read: only the status matters, and a receiver's body (however
        # large) is not our concern.
        async with client.stream(
            "POST", url, content=request.body, headers=request.headers
        ) as response:
            status = response.status_code
    except httpx.HTTPError as exc:
        raise DeliveryFailed(type(exc).__name__) from exc
    # Redirects are not followed (the client is built that way): a receiver that moved
    # must be re-registered, not silently followed somewhere else with our signature.
    if not 200 <= status < 300:
        raise DeliveryFailed(f"HTTP {status}")
    return status
