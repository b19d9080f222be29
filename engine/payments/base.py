"""The one interface every payment provider implements, and the helpers they share.

A provider turns an order into something the buyer can pay (`create`), and turns a
provider's callback into a verified `PaymentNotice` (`verify_notify`). It never touches
the database: the orders service compares the notice's amount and currency with the
stored order and is idempotent on `(provider, trade_no)`, so a replayed but genuine
callback is harmless and providers need no replay store of their own.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

# Alipay, WeChat Pay and 易支付 gateways all live in China Standard Time, which has had no
# daylight saving since 1991: a fixed offset needs no tzdata on the host.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")

# 10^15 fen is ten trillion yuan: far above any real payment, far below PostgreSQL's
# bigint, so a hostile "money=1e400"-style value can never reach arithmetic or storage.
MAX_AMOUNT = 10**15

_YUAN = re.compile(r"(0|[1-9][0-9]{0,13})(\.[0-9]{1,2})?")


class PaymentErrorCode(StrEnum):
    """Why a callback was refused. Stable values: logged and counted, never shown to buyers."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNSUPPORTED_SIGNATURE = "unsupported_signature"
    UNKNOWN_KEY = "unknown_key"
    STALE = "stale"
    WRONG_MERCHANT = "wrong_merchant"
    BAD_AMOUNT = "bad_amount"
    DECRYPTION_FAILED = "decryption_failed"


@dataclass(frozen=True)
class PaymentOrder:
    """What a provider needs to create a payment. `amount` is in minor units (fen)."""

    order_no: str
    amount: int
    currency: str
    subject: str
    expires_at: datetime
    client_ip: str | None = None


@dataclass(frozen=True)
class PayRequest:
    """What the buyer is sent to: a page to open, a QR code to scan, or both."""

    pay_url: str | None
    qr_code: str | None = None


@dataclass(frozen=True)
class PaymentNotice:
    """A verified callback or query result. `amount` is in minor units (fen)."""

    provider: str
    order_no: str
    trade_no: str
    amount: int
    currency: str
    paid: bool


@dataclass(frozen=True)
class CallbackReply:
    """Exactly what the provider expects back from its callback."""

    status_code: int
    body: bytes
    media_type: str


@dataclass(frozen=True)
class RefundResult:
    """`succeeded`: the provider accepted the refund (WeChat may still be settling it).

    `refund_no` is the caller's refund number, echoed, so retries can be matched up.
    """

    provider: str
    refund_no: str
    amount: int
    succeeded: bool


@dataclass(frozen=True)
class NotifyRequest:
    """A callback as it arrives over HTTP: the arguments of `verify_notify`."""

    method: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes


class PaymentRejected(Exception):
    """A callback that must not be believed: bad signature, stale, wrong merchant, bad amount.

    `reason` is for logs and says what was wrong, never what the secret or signature was.
    """

    def __init__(self, code: PaymentErrorCode, reason: str) -> None:
        super().__init__(f"{code.value}: {reason}")
        self.code: str = code.value
        self.reason = reason


class PaymentProviderError(Exception):
    """The provider was unreachable or answered an error (create, query, refund).

    The message names the provider and what failed; it never carries keys or signatures.
    """

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider


class PaymentProvider(Protocol):
    """A payment provider. Implementations: sandbox, epay, alipay, wechatpay."""

    name: str

    async def create(self, order: PaymentOrder) -> PayRequest: ...

    def verify_notify(
        self,
        *,
        method: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        body: bytes,
    ) -> PaymentNotice:
        """Verify a callback and return what it says; raise `PaymentRejected` otherwise."""
        ...

    def reply_ok(self) -> CallbackReply: ...

    def reply_error(self) -> CallbackReply: ...

    async def query(self, order_no: str) -> PaymentNotice | None:
        """Ask the provider about an order; None when it has never heard of it."""
        ...

    async def refund(
        self,
        *,
        order_no: str,
        trade_no: str,
        amount: int,
        total: int,
        refund_no: str,
        reason: str,
    ) -> RefundResult: ...


def check_refund_amount(amount: int, total: int) -> None:
    """A refund is of a positive amount no larger than what was paid."""
    if not 0 < amount <= total:
        raise ValueError("refund amount must be within the paid total")


def parse_yuan(text: str) -> int:
    """Parse a provider's yuan string ("12.30") into fen without ever using float.

    Refuses signs, exponents, spaces, more than two decimals, zero and absurd sizes: a
    payment callback has no business sending any of those.
    """
    if not _YUAN.fullmatch(text):
        raise PaymentRejected(PaymentErrorCode.BAD_AMOUNT, "amount is not a yuan amount")
    fen = int(Decimal(text) * 100)
    if not 0 < fen <= MAX_AMOUNT:
        raise PaymentRejected(PaymentErrorCode.BAD_AMOUNT, "amount is out of range")
    return fen


def format_yuan(fen: int) -> str:
    """Fen to the two-decimal yuan string gateways expect (1230 -> "12.30")."""
    if not 0 < fen <= MAX_AMOUNT:
        raise ValueError("amount out of range")
    return f"{fen // 100}.{fen % 100:02d}"


def parse_form(body: bytes) -> dict[str, str]:
    """Decode an x-www-form-urlencoded body, refusing repeated keys.

    A repeated key is how a tampered callback smuggles a second value past a verifier
    that reads the first one while the signature covered the other.
    """
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise PaymentRejected(PaymentErrorCode.MALFORMED, "body is not UTF-8") from exc
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise PaymentRejected(PaymentErrorCode.MALFORMED, f"repeated field {key!r}")
        form[key] = value
    return form


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers keyed in lower case, since a plain dict is not case-insensitive."""
    return {name.lower(): value for name, value in headers.items()}


def _pem_or_file(text: str, kind: str) -> bytes:
    """Accept a PEM, a path to a PEM file, or the bare base64 body merchant consoles show."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return stripped.encode()
    path = Path(stripped)
    try:
        is_file = path.is_file()
    except OSError:  # bare base64 has "/" and can make a too-long "file name"
        is_file = False
    if is_file:
        return path.read_bytes()
    body = "\n".join(stripped[i : i + 64] for i in range(0, len(stripped), 64))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n".encode()


def load_rsa_private_key(text: str) -> RSAPrivateKey:
    """Load an RSA private key (PKCS#8 or PKCS#1), as PEM, file path or bare base64."""
    try:
        pem = _pem_or_file(text, "PRIVATE KEY")
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, OSError):
        # `from None`: a parser's message may echo part of the key.
        raise ValueError("not a readable RSA private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise TypeError("not an RSA private key")
    return key


def load_rsa_public_key(text: str) -> RSAPublicKey:
    """Load an RSA public key (SubjectPublicKeyInfo), as PEM, file path or bare base64."""
    try:
        key = serialization.load_pem_public_key(_pem_or_file(text, "PUBLIC KEY"))
    except (ValueError, TypeError, OSError):
        raise ValueError("not a readable RSA public key") from None
    if not isinstance(key, RSAPublicKey):
        raise TypeError("not an RSA public key")
    return key


def b64decode_strict(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise PaymentRejected(PaymentErrorCode.MALFORMED, f"{what} is not base64") from exc
