"""Writing to the outbox, and the operator's view of it.

`emit_event` and `enqueue_email` run on the caller's connection, inside the caller's
transaction: the message exists if and only if the state change it announces committed.
Nothing is sent here; `engine.notify.worker` delivers committed rows later.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import orjson

from engine.distribution.service import DistributionError
from engine.errors import CommonError, DomainError
from engine.notify.email import check_context, resolve_locale, template_exists
from engine.storage.db import Connection, Executor


class NotifyError(StrEnum):
    INVALID_WEBHOOK_URL = "invalid_webhook_url"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    WEBHOOK_ENDPOINT_NOT_FOUND = "webhook_endpoint_not_found"
    WEBHOOK_ENDPOINT_DISABLED = "webhook_endpoint_disabled"
    OUTBOX_MESSAGE_NOT_FOUND = "outbox_message_not_found"
    OUTBOX_MESSAGE_NOT_DEAD = "outbox_message_not_dead"


# Every event a webhook can carry. Endpoints subscribe to a subset; an unknown type is a
# typo on either side, refused rather than silently never delivered.
EVENT_TYPES = frozenset({"order.paid", "order.delivered", "order.refunded"})


# 24 random bytes, base64: what Standard Webhooks libraries generate (whsec_ + base64).
_SECRET_BYTES = 24


@dataclass(frozen=True)
class WebhookEndpoint:
    id: int
    url: str
    event_types: list[str] | None
    agent_id: int | None
    description: str | None
    enabled: bool
    created_at: datetime
    # Deliberately no secret: it is returned once by `create_endpoint`, never read back.


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    kind: str
    destination: str
    topic: str
    locale: str | None
    message_id: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    # Deliberately no payload: an email's context carries a reveal link, i.e. access.


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


# --- writes inside the caller's transaction --------------------------------------------


async def emit_event(
    conn: Connection, event_type: str, data: dict[str, Any], *, agent_id: int | None = None
) -> list[int]:
    """Queue `event_type` for every enabled endpoint subscribed to it: the merchant's, and
    the agent's own when `agent_id` is given. Returns the outbox ids (none: no subscriber).

    Call it on the connection of the transaction that makes the change, so a rollback
    takes the webhooks with it.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; add it to EVENT_TYPES")
    rows = await conn.fetch(
        """
        INSERT INTO outbox (kind, endpoint_id, topic, payload)
        SELECT 'webhook', e.id, $1, $2::jsonb
        FROM webhook_endpoints e
        WHERE e.enabled
          AND (e.agent_id IS NULL OR e.agent_id = $3)
          AND (e.event_types IS NULL OR $1 = ANY (e.event_types))
        ORDER BY e.id
        RETURNING id
        """,
        event_type,
        orjson.dumps(data).decode(),
        agent_id,
    )
    return [row["id"] for row in rows]


async def enqueue_email(
    conn: Connection, to: str, template: str, locale: str, context: dict[str, Any]
) -> int:
    """Queue one templated email (rendered when sent, in `locale` or the nearest one we
    have). The context is checked now, so a missing field fails the caller's transaction
    rather than a delivery hours later; it must never hold a card key."""
    if not template_exists(template):
        raise ValueError(f"unknown email template {template!r}")
    if "@" not in to or len(to) > 320 or any(c in to for c in "\r\n<>,;"):
        raise ValueError("not a single email address")
    resolved = resolve_locale(locale)
    check_context(template, resolved, context)
    outbox_id: int = await conn.fetchval(
        "INSERT INTO outbox (kind, email_to, topic, payload, locale) "
        "VALUES ('email', $1, $2, $3::jsonb, $4) RETURNING id",
        to,
        template,
        orjson.dumps(context).decode(),
        resolved,
    )
    return outbox_id


# --- webhook endpoints (operator) ------------------------------------------------------


def check_webhook_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        valid = (
            parts.scheme in {"http", "https"}
            and bool(parts.hostname)
            and len(url) <= 2000
            and not any(c.isspace() or not c.isprintable() for c in url)
        )
        _ = parts.port  # raises on a port that is not a number or out of range
    except ValueError:
        valid = False
    if not valid:
        raise DomainError(
            NotifyError.INVALID_WEBHOOK_URL,
            "The webhook URL must be an absolute http(s) URL without spaces.",
        )
    return url


def check_event_types(event_types: list[str] | None) -> list[str] | None:
    if event_types is None:
        return None
    unknown = sorted(set(event_types) - EVENT_TYPES)
    if unknown or not event_types:
        raise DomainError(
            NotifyError.UNKNOWN_EVENT_TYPE,
            f"Event types must be null (all) or some of: {', '.join(sorted(EVENT_TYPES))}.",
            unknown=unknown,
        )
    return sorted(set(event_types))


_ENDPOINT_COLUMNS = "id, url, event_types, agent_id, description, enabled, created_at"


def _endpoint(row: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        url=row["url"],
        event_types=list(row["event_types"]) if row["event_types"] is not None else None,
        agent_id=row["agent_id"],
        description=row["description"],
        enabled=row["enabled"],
        created_at=row["created_at"],
    )


async def create_endpoint(
    conn: Connection,
    url: str,
    *,
    event_types: list[str] | None = None,
    agent_id: int | None = None,
    description: str | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint; returns it with its signing secret (shown to the caller once)."""
    check_webhook_url(url)
    types = check_event_types(event_types)
    if agent_id is not None and not await conn.fetchval(
        "SELECT true FROM agents WHERE id = $1", agent_id
    ):
        raise DomainError(DistributionError.AGENT_NOT_FOUND, f"No agent {agent_id}.")
    secret = new_webhook_secret()
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (url, secret, event_types, agent_id, description) "  # noqa: S608 (a constant column list)
        f"VALUES ($1, $2, $3, $4, $5) RETURNING {_ENDPOINT_COLUMNS}",
        url,
        secret,
        types,
        agent_id,
        description,
    )
    return _endpoint(row), secret


async def list_endpoints(
    conn: Executor, *, limit: int, after_id: int | None = None
) -> list[WebhookEndpoint]:
    rows = await conn.fetch(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints "  # noqa: S608 (a constant column list)
        "WHERE $1::bigint IS NULL OR id > $1 ORDER BY id LIMIT $2",
        after_id,
        limit,
    )
    return [_endpoint(row) for row in rows]


async def disable_endpoint(conn: Connection, endpoint_id: int) -> WebhookEndpoint:
    """Stop delivering to an endpoint. Its queued messages go dead when the worker meets
    them (an operator can retry them after enabling a replacement)."""
    row = await conn.fetchrow(
        "UPDATE webhook_endpoints SET enabled = false, "  # noqa: S608 (a constant column list)
        "disabled_at = coalesce(disabled_at, now()) "
        f"WHERE id = $1 RETURNING {_ENDPOINT_COLUMNS}",
        endpoint_id,
    )
    if row is None:
        raise DomainError(NotifyError.WEBHOOK_ENDPOINT_NOT_FOUND, "No such webhook endpoint.")
    return _endpoint(row)


# --- the outbox (operator) -------------------------------------------------------------

_MESSAGE_COLUMNS = (
    "id, kind, coalesce(endpoint_id::text, email_to) AS destination, topic, locale, "
    "message_id, status, attempts, next_attempt_at, last_error, created_at, sent_at"
)


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(**dict(row))


async def list_messages(
    conn: Executor, *, status: str | None, limit: int, before_id: int | None = None
) -> list[OutboxMessage]:
    """Newest first, optionally of one status."""
    rows = await conn.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM outbox "  # noqa: S608 (a constant column list)
        "WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR id < $2) "
        "ORDER BY id DESC LIMIT $3",
        status,
        before_id,
        limit,
    )
    return [_message(row) for row in rows]


async def retry_message(conn: Connection, outbox_id: int) -> OutboxMessage:
    """Put a dead message back in the queue, due now, with a fresh count of attempts."""
    row = await conn.fetchrow(
        "SELECT o.status, o.kind, e.enabled FROM outbox o "
        "LEFT JOIN webhook_endpoints e ON e.id = o.endpoint_id WHERE o.id = $1 FOR UPDATE OF o",
        outbox_id,
    )
    if row is None:
        raise DomainError(NotifyError.OUTBOX_MESSAGE_NOT_FOUND, "No such outbox message.")
    if row["status"] != "dead":
        raise DomainError(
            NotifyError.OUTBOX_MESSAGE_NOT_DEAD,
            f"Only dead messages can be retried; this one is {row['status']}.",
            message_status=row["status"],
        )
    if row["kind"] == "webhook" and not row["enabled"]:
        raise DomainError(
            NotifyError.WEBHOOK_ENDPOINT_DISABLED,
            "This message's webhook endpoint is disabled; it would go dead again.",
        )
    updated = await conn.fetchrow(
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = now(), "  # noqa: S608 (a constant column list)
        f"last_error = NULL WHERE id = $1 RETURNING {_MESSAGE_COLUMNS}",
        outbox_id,
    )
    return _message(updated)


# --- opaque cursors --------------------------------------------------------------------


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = raw.partition(":")
        last_id = int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        last_id = 0
        prefix = ""
    if prefix != "id" or not 0 < last_id < 2**63:
        raise DomainError(CommonError.INVALID_REQUEST, "The cursor is not one we issued.")
    return last_id
