"""The audit log: who did what to which subject. Append-only (enforced by the schema)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog

from engine.storage.db import Connection


async def record(
    conn: Connection,
    actor: str,
    action: str,
    subject: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    await conn.execute(
        "INSERT INTO audit_log (actor, action, subject, detail, request_id) "
        "VALUES ($1, $2, $3, $4::jsonb, $5)",
        actor,
        action,
        subject,
        orjson.dumps(detail or {}).decode(),
        request_id,
    )
