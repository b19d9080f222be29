"""Notifications through an outbox: emails (SMTP) and Standard Webhooks, written in the
transaction of the change they announce and delivered, with retries, by `OutboxWorker`."""

from engine.notify.outbox import EVENT_TYPES, NotifyError, emit_event, enqueue_email
from engine.notify.worker import OutboxWorker

__all__ = ["EVENT_TYPES", "NotifyError", "OutboxWorker", "emit_event", "enqueue_email"]
