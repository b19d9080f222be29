"""Real receivers for notification tests: an SMTP server (aiosmtpd) and a loopback HTTP
webhook receiver. Both run in a thread of their own, so the code under test talks to them
over real sockets exactly as it would to a mail relay or a merchant's server."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def free_port() -> int:
    """A port nothing listens on right now (kept closed: a 'down' receiver's address)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- SMTP -------------------------------------------------------------------------------


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        content: str = body.get_content()
        return content


class _Collect:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._sink.lock:
            self._sink.received.append(
                ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message)
            )
        return "250 Message accepted for delivery"


class SmtpSink:
    """An SMTP server on 127.0.0.1 that keeps every message it accepts."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.lock = threading.Lock()
        self.received: list[ReceivedMail] = []
        self._controller = Controller(_Collect(self), hostname=self.host, port=self.port)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def messages(self) -> list[ReceivedMail]:
        with self.lock:
            return list(self.received)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()


# --- webhooks ---------------------------------------------------------------------------


@dataclass
class Attempt:
    headers: dict[str, str]
    body: bytes
    status: int
    # The Standard Webhooks check of this request with the receiver's secret; None when
    # the receiver was not given one.
    verified: bool | None


@dataclass
class WebhookReceiver:
    """Answers `fail_status` to its first `fail_first` requests, then 204; records all.

    Created stopped: its port refuses connections (a receiver that is down) until
    `start()`, which can come late, on the same port.
    """

    fail_first: int = 0
    fail_status: int = 500
    secret: str | None = None
    port: int = field(default_factory=free_port)
    attempts: list[Attempt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/kami?tenant=test"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(self, headers, body)

            def log_message(self, *_args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def _record(
        self, handler: BaseHTTPRequestHandler, headers: dict[str, str], body: bytes
    ) -> None:
        verified: bool | None = None
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
        with self.lock:
            failing = len(self.attempts) < self.fail_first
            status = self.fail_status if failing else (204 if verified is not False else 400)
            self.attempts.append(Attempt(headers, body, status, verified))
        handler.send_response(status)
        handler.send_header("content-length", "0")
        handler.end_headers()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def all_attempts(self) -> list[Attempt]:
        with self.lock:
            return list(self.attempts)

    def delivered(self) -> list[Attempt]:
        return [a for a in self.all_attempts() if 200 <= a.status < 300]

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()
