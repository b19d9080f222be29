"""Email: templates rendered per locale into a text and an HTML part, sent over SMTP.

Templates live in `templates/` as `<name>.<locale>.subject`, `.txt` and `.html`. Only the
HTML part is autoescaped (a product name is merchant input and must not become markup);
undefined variables are errors, so a template and its callers cannot drift apart silently.
An email never carries a card key: delivery mails carry a reveal link instead, and the
context refuses the names a key would travel under.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from functools import cache
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2
import orjson

from engine.settings import Settings

TEMPLATES_DIR = Path(__file__).with_name("templates")
LOCALES = ("zh-CN", "en")
# The shop's home market; a buyer whose language we do not have gets this.
DEFAULT_LOCALE = "zh-CN"
_PARTS = ("subject", "txt", "html")
# Context names a card key (or several) would be passed under. Refused outright, so a
# careless caller fails in tests instead of mailing plaintext keys.
FORBIDDEN_CONTEXT = frozenset({"code", "codes", "key", "keys", "card_key", "card_keys", "secret"})
# Digits after the decimal point, for the currencies that do not use two.
_MINOR_DIGITS = {"JPY": 0, "KRW": 0, "VND": 0, "BHD": 3, "KWD": 3, "JOD": 3}
_SYMBOLS = {"CNY": "¥", "USD": "$", "EUR": "€", "GBP": "£", "HKD": "HK$", "JPY": "¥"}


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def _money(amount: int, currency: str = "CNY") -> str:
    digits = _MINOR_DIGITS.get(currency, 2)
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**digits)
    number = f"{whole:,}" + (f".{frac:0{digits}d}" if digits else "")
    symbol = _SYMBOLS.get(currency)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency}"


def _utc(value: str | datetime) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html",), default_for_string=False, default=False
        ),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["money"] = _money
    env.filters["utc"] = _utc
    return env


def template_exists(template: str) -> bool:
    return re.fullmatch(r"[a-z][a-z0-9_]{0,63}", template) is not None and all(
        (TEMPLATES_DIR / f"{template}.{locale}.{part}").is_file()
        for locale in LOCALES
        for part in _PARTS
    )


def resolve_locale(locale: str | None) -> str:
    """The nearest locale we have: exact (any case), then same language, then default."""
    wanted = (locale or "").replace("_", "-").lower()
    for candidate in LOCALES:
        if candidate.lower() == wanted:
            return candidate
    language = wanted.split("-", 1)[0]
    for candidate in LOCALES:
        if candidate.split("-", 1)[0].lower() == language:
            return candidate
    return DEFAULT_LOCALE


def render(template: str, locale: str, context: dict[str, Any]) -> RenderedEmail:
    env = _environment()
    resolved = resolve_locale(locale)
    parts = [env.get_template(f"{template}.{resolved}.{part}").render(context) for part in _PARTS]
    # One line, whatever the merchant typed into a product name: a header cannot break.
    subject = " ".join(parts[0].split())
    return RenderedEmail(subject=subject, text=parts[1], html=parts[2])


def check_context(template: str, locale: str, context: dict[str, Any]) -> None:
    """Refuse a context that carries a key or does not render (as it will be stored)."""
    forbidden = sorted(FORBIDDEN_CONTEXT & set(context))
    if forbidden:
        raise ValueError(f"email context must not carry card keys: {forbidden}")
    stored = orjson.loads(orjson.dumps(context))
    try:
        render(template, locale, stored)
    except jinja2.TemplateError as exc:
        raise ValueError(f"email template {template!r} does not render: {exc}") from exc


def build_message(
    rendered: RenderedEmail, *, to: str, sender: str, message_id: str
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = rendered.subject
    message["Date"] = formatdate(usegmt=True)
    # The same Message-ID on every retry lets a receiving server drop a duplicate.
    domain = parseaddr(sender)[1].rpartition("@")[2] or "kami.invalid"
    message["Message-ID"] = f"<{message_id}@{domain}>"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


class SmtpSender:
    """Sends one message per connection: mail volume is orders, not a newsletter, and a
    fresh connection cannot be left half-broken by the previous send."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @property
    def configured(self) -> bool:
        return self._settings.smtp_host is not None

    @property
    def sender(self) -> str:
        return self._settings.smtp_from

    async def send(self, message: EmailMessage) -> None:
        s = self._settings
        password = s.smtp_password.get_secret_value() if s.smtp_password else None
        await aiosmtplib.send(
            message,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=password,
            use_tls=s.smtp_security == "tls",
            # True, not None ("if offered"): a server that stops offering STARTTLS must
            # not silently downgrade the connection to plain text.
            start_tls=s.smtp_security == "starttls",
            timeout=s.smtp_timeout_s,
        )
