"""The outbox worker: claims due messages, sends them, records the outcome.

Any number of workers (tasks, processes, hosts) can run at once. A claim is one UPDATE
over rows picked `FOR UPDATE SKIP LOCKED`, so two workers never claim the same row; it
sets the row `sending` with a lease (`next_attempt_at` in the future) instead of holding
a transaction open across the network call. A worker that dies mid-send leaves its rows
`sending` with an expiring lease, and they become due again: delivery is at least once,
and the stable `webhook-id` / Message-ID lets receivers drop the rare duplicate.

Outcomes are recorded only by the claim that made them (same id, status and attempt
number), so a worker that outlived its lease cannot overwrite a newer attempt's result.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosmtplib
import asyncpg
import httpx
import orjson
import structlog

from engine.notify.email import SmtpSender, build_message, render
from engine.notify.webhooks import DeliveryFailed, deliver, sign
from engine.settings import Settings

log = structlog.get_logger(__name__)

BATCH_SIZE = 32
# A claim outlives the slowest send by a wide margin: a live worker must not lose its
# rows to another one while it is still waiting on a receiver.
LEASE_MARGIN_S = 60.0
_MAX_ERROR = 300


def _json(value: Any) -> dict[str, Any]:
    # jsonb arrives as text unless a pool registers a codec; accept either.
    decoded: dict[str, Any] = orjson.loads(value) if isinstance(value, str | bytes) else value
    return decoded


class PermanentFailure(Exception):
    """Retrying cannot help (endpoint disabled, template gone): straight to dead."""


@dataclass(frozen=True)
class _Claimed:
    id: int
    kind: str
    endpoint_id: int | None
    email_to: str | None
    topic: str
    payload: dict[str, Any]
    locale: str | None
    message_id: str
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class _Endpoint:
    url: str
    secret: str
    enabled: bool


class OutboxWorker:
    def __init__(
        self,
        db: asyncpg.Pool,
        settings: Settings,
        *,
        batch_size: int = BATCH_SIZE,
        lease_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._batch_size = batch_size
        self._lease_s = lease_s or (
            3 * max(settings.webhook_timeout_s, settings.smtp_timeout_s) + LEASE_MARGIN_S
        )
        # Jitter only spreads retries apart; it needs no cryptographic randomness.
        self._rng = rng or random.Random()  # noqa: S311
        self._smtp = SmtpSender(settings)
        # Made on first use, inside the running loop, so a worker that never runs holds
        # no sockets.
        self._http: httpx.AsyncClient | None = None
        # Without SMTP, emails are left pending (not failed): they go out once it is set,
        # instead of burning their attempts against a server that does not exist.
        self._kinds = ["webhook", "email"] if self._smtp.configured else ["webhook"]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self._settings.webhook_timeout_s,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=self._batch_size),
            )
        return self._http

    async def run_forever(self) -> None:
        if not self._smtp.configured:
            log.info("outbox_emails_waiting_for_smtp", hint="set KAMI_SMTP_HOST to send emails")
        try:
            while True:
                try:
                    handled = await self.run_once()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("outbox_pass_failed", error=type(exc).__name__)
                    handled = 0
                except Exception:
                    # A bug must not stop delivery for the life of the process: log it and
                    # carry on; the rows it held come back when their lease expires.
                    log.exception("outbox_pass_crashed")
                    handled = 0
                # A full batch means more may be due: go again at once.
                if handled < self._batch_size:
                    await asyncio.sleep(self._settings.outbox_poll_interval_s)
        finally:
            await self.close()

    async def run_once(self) -> int:
        """Claim the due messages (one batch), attempt each; return how many were claimed."""
        claimed, endpoints = await self._claim()
        if claimed:
            await asyncio.gather(*(self._attempt(m, endpoints) for m in claimed))
        return len(claimed)

    def backoff_s(self, attempts: int) -> float:
        """Exponential, capped, with "equal jitter": at least half the step, so retries of
        a burst spread out but none comes back almost at once."""
        s = self._settings
        step = min(s.outbox_backoff_cap_s, s.outbox_backoff_base_s * 2.0 ** min(attempts - 1, 62))
        jitter: float = self._rng.uniform(0, step / 2)
        return step / 2 + jitter

    async def _claim(self) -> tuple[list[_Claimed], dict[int, _Endpoint]]:
        async with self._db.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                WITH due AS (
                    SELECT id FROM outbox
                    WHERE status IN ('pending', 'sending')
                      AND next_attempt_at <= now()
                      AND kind = ANY ($1::text[])
                    ORDER BY next_attempt_at
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE outbox o
                SET status = 'sending',
                    attempts = o.attempts + 1,
                    next_attempt_at = now() + make_interval(secs => $3)
                FROM due
                WHERE o.id = due.id
                RETURNING o.id, o.kind, o.endpoint_id, o.email_to, o.topic, o.payload,
                          o.locale, o.message_id, o.attempts, o.created_at
                """,
                self._kinds,
                self._batch_size,
                self._lease_s,
            )
            endpoint_ids = sorted({r["endpoint_id"] for r in rows if r["endpoint_id"]})
            endpoint_rows = (
                await conn.fetch(
                    "SELECT id, url, secret, enabled FROM webhook_endpoints WHERE id = ANY ($1)",
                    endpoint_ids,
                )
                if endpoint_ids
                else []
            )
        claimed = [_Claimed(**{**dict(r), "payload": _json(r["payload"])}) for r in rows]
        endpoints = {
            r["id"]: _Endpoint(url=r["url"], secret=r["secret"], enabled=r["enabled"])
            for r in endpoint_rows
        }
        return claimed, endpoints

    async def _attempt(self, message: _Claimed, endpoints: dict[int, _Endpoint]) -> None:
        if message.attempts > self._settings.outbox_max_attempts:
            # Its last attempt's worker vanished (lease expired): we cannot know whether
            # that one got through, and the budget is spent.
            await self._fail(message, "worker lost during the last attempt", permanent=True)
            return
        try:
            if message.kind == "webhook":
                await self._send_webhook(message, endpoints)
            else:
                await self._send_email(message)
        except PermanentFailure as exc:
            await self._fail(message, str(exc), permanent=True)
        except DeliveryFailed as exc:
            await self._fail(message, exc.reason)
        except aiosmtplib.SMTPResponseException as exc:
            await self._fail(message, f"{type(exc).__name__} {exc.code}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._fail(message, type(exc).__name__)
        except Exception as exc:
            # Unexpected (a bug, a corrupt row): retried like any failure, so one bad
            # message ends dead instead of taking the worker down. No message text: it
            # could quote the payload or the endpoint's secret.
            log.error("outbox_attempt_crashed", outbox_id=message.id, error=type(exc).__name__)
            await self._fail(message, type(exc).__name__)
        else:
            await self._succeed(message)

    async def _send_webhook(self, message: _Claimed, endpoints: dict[int, _Endpoint]) -> None:
        endpoint = endpoints.get(message.endpoint_id or 0)
        if endpoint is None or not endpoint.enabled:
            raise PermanentFailure("webhook endpoint disabled")
        request = sign(
            secret=endpoint.secret,
            message_id=message.message_id,
            event_type=message.topic,
            occurred_at=message.created_at,
            data=message.payload,
        )
        await deliver(self._client(), endpoint.url, request)

    async def _send_email(self, message: _Claimed) -> None:
        assert message.email_to is not None  # the schema ties email_to to kind 'email'
        try:
            rendered = render(message.topic, message.locale or "", message.payload)
        except Exception as exc:  # jinja2 and its loaders raise many types
            raise PermanentFailure(f"template does not render: {type(exc).__name__}") from exc
        email = build_message(
            rendered, to=message.email_to, sender=self._smtp.sender, message_id=message.message_id
        )
        await self._smtp.send(email)

    async def _succeed(self, message: _Claimed) -> None:
        done = await self._db.execute(
            "UPDATE outbox SET status = 'sent', sent_at = now(), last_error = NULL "
            "WHERE id = $1 AND status = 'sending' AND attempts = $2",
            message.id,
            message.attempts,
        )
        log.info(
            "outbox_sent",
            outbox_id=message.id,
            kind=message.kind,
            topic=message.topic,
            attempts=message.attempts,
            recorded=done.endswith(" 1"),
        )

    async def _fail(self, message: _Claimed, reason: str, *, permanent: bool = False) -> None:
        reason = reason[:_MAX_ERROR]
        dead = permanent or message.attempts >= self._settings.outbox_max_attempts
        delay = 0.0 if dead else self.backoff_s(message.attempts)
        await self._db.execute(
            "UPDATE outbox SET status = $3, next_attempt_at = now() + make_interval(secs => $4), "
            "last_error = $5 WHERE id = $1 AND status = 'sending' AND attempts = $2",
            message.id,
            message.attempts,
            "dead" if dead else "pending",
            delay,
            reason,
        )
        log.warning(
            "outbox_dead" if dead else "outbox_retry",
            outbox_id=message.id,
            kind=message.kind,
            topic=message.topic,
            attempts=message.attempts,
            error=reason,
            retry_in_s=None if dead else round(delay, 3),
        )
