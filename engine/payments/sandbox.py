"""The sandbox provider: payments that cost nothing, through the real callback code path.

`POST /v1/payments/sandbox/{order_no}/pay` calls `sign_payment` and hands the result to
`verify_notify`, exactly as `/notify` does for a real provider's callback, so a demo
purchase exercises the same verification, amount check and idempotency as real money.

Callbacks are a JSON body signed with HMAC-SHA256 in the `Kami-Sandbox-Signature` header.
The key is `KAMI_SANDBOX_SECRET`, or else 32 random bytes drawn when the provider is
built: the pay endpoint signs and verifies in the same process, so nothing needs sharing,
and a key nobody knows means nobody outside can forge a sandbox payment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping

from engine._core import constant_time_eq
from engine.payments.base import (
    MAX_AMOUNT,
    CallbackReply,
    NotifyRequest,
    PaymentErrorCode,
    PaymentNotice,
    PaymentOrder,
    PaymentRejected,
    PayRequest,
    RefundResult,
    lower_headers,
)

SIGNATURE_HEADER = "Kami-Sandbox-Signature"
# Long enough for a slow test machine, short enough that a captured callback goes stale.
MAX_AGE_S = 300


class SandboxProvider:
    """Signs and verifies its own callbacks; create, query and refund never leave the host."""

    name = "sandbox"

    def __init__(
        self,
        *,
        public_base_url: str,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base = public_base_url.rstrip("/")
        self._secret = secret if secret else secrets.token_bytes(32)
        self._clock = clock
        # What this process has "collected", so `query` can answer like a real gateway.
        self._paid: dict[str, PaymentNotice] = {}

    async def create(self, order: PaymentOrder) -> PayRequest:
        return PayRequest(pay_url=f"{self._base}/v1/payments/sandbox/{order.order_no}/pay")

    def sign_payment(
        self, order_no: str, amount: int, currency: str, trade_no: str
    ) -> NotifyRequest:
        """The callback a payment of `amount` for `order_no` produces, ready for
        `verify_notify(**vars(request))`."""
        body = json.dumps(
            {
                "order_no": order_no,
                "trade_no": trade_no,
                "amount": amount,
                "currency": currency,
                "paid": True,
                "timestamp": int(self._clock()),
            },
            separators=(",", ":"),
        ).encode()
        return NotifyRequest(
            method="POST",
            headers={SIGNATURE_HEADER: self._mac(body), "Content-Type": "application/json"},
            query={},
            body=body,
        )

    def verify_notify(
        self,
        *,
        method: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        body: bytes,
    ) -> PaymentNotice:
        given = lower_headers(headers).get(SIGNATURE_HEADER.lower(), "")
        if not constant_time_eq(self._mac(body).encode(), given.encode()):
            raise PaymentRejected(PaymentErrorCode.BAD_SIGNATURE, "sandbox signature mismatch")
        try:
            data = json.loads(body)
            order_no, trade_no = data["order_no"], data["trade_no"]
            amount, currency = data["amount"], data["currency"]
            paid, timestamp = data["paid"], data["timestamp"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PaymentRejected(PaymentErrorCode.MALFORMED, "sandbox body malformed") from exc
        if not all(isinstance(v, str) and v for v in (order_no, trade_no, currency)):
            raise PaymentRejected(PaymentErrorCode.MALFORMED, "sandbox fields malformed")
        # bool is an int in Python; a signed `true` amount is still nonsense.
        if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:
            raise PaymentRejected(PaymentErrorCode.BAD_AMOUNT, "sandbox amount out of range")
        if type(timestamp) is not int or abs(self._clock() - timestamp) > MAX_AGE_S:
            raise PaymentRejected(PaymentErrorCode.STALE, "sandbox callback is stale")
        notice = PaymentNotice(
            provider=self.name,
            order_no=order_no,
            trade_no=trade_no,
            amount=amount,
            currency=currency,
            paid=paid is True,
        )
        if notice.paid:
            self._paid[order_no] = notice
        return notice

    def reply_ok(self) -> CallbackReply:
        return CallbackReply(200, b'{"ok":true}', "application/json")

    def reply_error(self) -> CallbackReply:
        return CallbackReply(400, b'{"ok":false}', "application/json")

    async def query(self, order_no: str) -> PaymentNotice | None:
        return self._paid.get(order_no)

    async def refund(
        self,
        *,
        order_no: str,
        trade_no: str,
        amount: int,
        total: int,
        refund_no: str,
        reason: str,
    ) -> RefundResult:
        return RefundResult(self.name, refund_no, amount, succeeded=0 < amount <= total)

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._secret, body, hashlib.sha256).hexdigest()
