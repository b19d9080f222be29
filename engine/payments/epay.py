"""易支付 (epay) V1: the MD5-signed aggregator protocol most small Chinese shops use.

Signing, as V1 gateways implement it: drop `sign`, `sign_type` and empty values, sort the
rest by key, join as `k=v&k2=v2` (raw, not URL-encoded), append the merchant key with no
separator, MD5, lower-case hex. The same rule signs our requests and their callbacks.

The query and refund endpoints (`api.php`) are authenticated by sending the merchant key
itself, as V1 defines; use an https gateway URL. Their answers are unsigned, which is
why only a signed callback, never a query result, should be able to mark an order paid
without a human looking (the orders service decides that).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlencode

import httpx

from engine._core import constant_time_eq
from engine.payments.base import (
    CallbackReply,
    PaymentErrorCode,
    PaymentNotice,
    PaymentOrder,
    PaymentProviderError,
    PaymentRejected,
    PayRequest,
    RefundResult,
    check_refund_amount,
    format_yuan,
    parse_form,
    parse_yuan,
)

PAID_STATUS = "TRADE_SUCCESS"
_NOTIFY_FIELDS = ("pid", "trade_no", "out_trade_no", "money", "trade_status", "sign")


def epay_sign(params: Mapping[str, str], key: str) -> str:
    """The V1 MD5 signature of `params` under the merchant `key`."""
    content = "&".join(
        f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type") and v
    )
    # MD5 is the protocol's choice, not ours; it is a keyed MAC here, not a password hash.
    return hashlib.md5((content + key).encode(), usedforsecurity=False).hexdigest()


class EpayProvider:
    name = "epay"

    def __init__(
        self,
        *,
        gateway_url: str,
        pid: str,
        key: str,
        notify_url: str,
        return_url: str,
        pay_type: str | None = None,
        method: Literal["submit", "mapi"] = "submit",
        timeout_s: float = 15.0,
    ) -> None:
        if method == "mapi" and pay_type is None:
            raise ValueError("epay mapi needs a pay type")
        self._gateway = gateway_url.rstrip("/")
        self._pid = pid
        self._key = key
        self._notify_url = notify_url
        self._return_url = return_url
        self._type = pay_type
        self._method = method
        self._timeout = timeout_s
        # Loading the CA bundle costs ~0.1 s; do it once, not per request. A client per
        # request (rather than one held) keeps the provider free of event-loop ties.
        self._tls = httpx.create_ssl_context()

    async def create(self, order: PaymentOrder) -> PayRequest:
        if order.currency != "CNY":
            raise PaymentProviderError(self.name, f"currency {order.currency} not supported")
        params = {
            "pid": self._pid,
            "out_trade_no": order.order_no,
            "notify_url": self._notify_url,
            "return_url": self._return_url.replace("{order_no}", order.order_no),
            "name": order.subject,
            "money": format_yuan(order.amount),
        }
        if self._type:
            params["type"] = self._type
        if self._method == "submit":
            # Page jump: nothing to call, the buyer's browser takes the signed URL there.
            return PayRequest(
                pay_url=f"{self._gateway}/submit.php?{urlencode(self._signed(params))}"
            )
        params["clientip"] = order.client_ip or "127.0.0.1"
        params["device"] = "pc"
        data = await self._call("POST", "mapi.php", form=self._signed(params))
        if str(data.get("code")) != "1":
            raise PaymentProviderError(self.name, f"mapi refused: {_msg(data)}")
        pay_url, qr = data.get("payurl"), data.get("qrcode")
        if not (isinstance(pay_url, str) and pay_url) and not (isinstance(qr, str) and qr):
            raise PaymentProviderError(self.name, "mapi answered neither payurl nor qrcode")
        return PayRequest(
            pay_url=pay_url if isinstance(pay_url, str) and pay_url else None,
            qr_code=qr if isinstance(qr, str) and qr else None,
        )

    def verify_notify(
        self,
        *,
        method: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        body: bytes,
    ) -> PaymentNotice:
        # V1 gateways call back with GET; a few forks POST a form instead. Same fields.
        params = dict(query) if query else parse_form(body)
        missing = [f for f in _NOTIFY_FIELDS if not params.get(f)]
        if missing:
            raise PaymentRejected(PaymentErrorCode.MALFORMED, f"missing {', '.join(missing)}")
        if params.get("sign_type", "MD5").upper() != "MD5":
            raise PaymentRejected(PaymentErrorCode.UNSUPPORTED_SIGNATURE, "sign_type not MD5")
        expected = epay_sign(params, self._key)
        if not constant_time_eq(expected.encode(), params["sign"].lower().encode()):
            raise PaymentRejected(PaymentErrorCode.BAD_SIGNATURE, "epay signature mismatch")
        if params["pid"] != self._pid:
            raise PaymentRejected(PaymentErrorCode.WRONG_MERCHANT, "pid is not ours")
        return PaymentNotice(
            provider=self.name,
            order_no=params["out_trade_no"],
            trade_no=params["trade_no"],
            amount=parse_yuan(params["money"]),
            currency="CNY",
            paid=params["trade_status"] == PAID_STATUS,
        )

    def reply_ok(self) -> CallbackReply:
        return CallbackReply(200, b"success", "text/plain")

    def reply_error(self) -> CallbackReply:
        # Anything but "success" makes the gateway retry; V1 gateways expect "fail".
        return CallbackReply(200, b"fail", "text/plain")

    async def query(self, order_no: str) -> PaymentNotice | None:
        data = await self._call(
            "GET",
            "api.php",
            params={"act": "order", "pid": self._pid, "key": self._key, "out_trade_no": order_no},
        )
        if str(data.get("code")) != "1":
            # V1 has no error codes to tell "unknown order" from other failures, only text.
            if "不存在" in _msg(data) or "not exist" in _msg(data).lower():
                return None
            raise PaymentProviderError(self.name, f"order query refused: {_msg(data)}")
        try:
            if str(data["out_trade_no"]) != order_no:
                raise PaymentProviderError(self.name, "order query answered another order")
            return PaymentNotice(
                provider=self.name,
                order_no=order_no,
                trade_no=str(data["trade_no"]),
                amount=parse_yuan(str(data["money"])),
                currency="CNY",
                paid=str(data.get("status")) == "1",
            )
        except (KeyError, PaymentRejected) as exc:
            raise PaymentProviderError(self.name, "order query answer malformed") from exc

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
        check_refund_amount(amount, total)
        data = await self._call(
            "POST",
            "api.php",
            params={"act": "refund"},
            form={
                "pid": self._pid,
                "key": self._key,
                "trade_no": trade_no,
                "out_trade_no": order_no,
                "money": format_yuan(amount),
            },
        )
        return RefundResult(self.name, refund_no, amount, succeeded=str(data.get("code")) == "1")

    def _signed(self, params: dict[str, str]) -> dict[str, str]:
        return {**params, "sign": epay_sign(params, self._key), "sign_type": "MD5"}

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(verify=self._tls, timeout=self._timeout) as http:
                response = await http.request(
                    method, f"{self._gateway}/{path}", params=params, data=form
                )
            response.raise_for_status()
            data = response.json()
        except httpx.HTTPStatusError as exc:
            raise PaymentProviderError(
                self.name, f"{path} answered HTTP {exc.response.status_code}"
            ) from None
        except httpx.HTTPError as exc:
            # `from None` and no URL: the query string carries the merchant key.
            raise PaymentProviderError(
                self.name, f"{path} unreachable: {type(exc).__name__}"
            ) from None
        except ValueError:
            raise PaymentProviderError(self.name, f"{path} answered non-JSON") from None
        if not isinstance(data, dict):
            raise PaymentProviderError(self.name, f"{path} answered non-object JSON")
        return data


def _msg(data: Mapping[str, Any]) -> str:
    """The gateway's own message, bounded: it goes into logs and exception text."""
    return str(data.get("msg", ""))[:200]
