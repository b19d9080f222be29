"""Alipay (支付宝) open platform, RSA2 keys mode: page pay or QR pay, query and refund.

Requests are built, signed and their answers verified by python-alipay-sdk. Its network
calls are blocking `urllib`, so they run in a worker thread. Callbacks are verified here
with `cryptography`, following Alipay's own SDKs (`AlipaySignature.rsaCheckV1`): every
field except `sign` and `sign_type`, empty values left out, sorted by key, joined
`k=v&...`, RSA-SHA256 with Alipay's public key. python-alipay-sdk's `verify` differs on
empty values and mutates its input, so it is not used for callbacks.

Callbacks carry `notify_time`, but Alipay retries a callback for about 25 hours, so its
age proves nothing; a replayed genuine callback is harmless because the orders service is
idempotent on (provider, trade_no).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal
from urllib.error import URLError

from alipay import AliPay  # type: ignore[import-untyped]
from alipay.exceptions import (  # type: ignore[import-untyped]
    AliPayException,
    AliPayValidationError,
)
from alipay.utils import AliPayConfig  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from engine.payments.base import (
    CHINA_TZ,
    CallbackReply,
    PaymentErrorCode,
    PaymentNotice,
    PaymentOrder,
    PaymentProviderError,
    PaymentRejected,
    PayRequest,
    RefundResult,
    b64decode_strict,
    check_refund_amount,
    format_yuan,
    load_rsa_private_key,
    load_rsa_public_key,
    parse_form,
    parse_yuan,
)

PAID_STATUSES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
SUCCESS_CODE = "10000"
_NOTIFY_FIELDS = ("app_id", "out_trade_no", "trade_no", "total_amount", "trade_status", "sign")


def alipay_sign_content(params: Mapping[str, str]) -> str:
    """The string Alipay signs in a callback (see the module docstring)."""
    return "&".join(
        f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type") and v
    )


class _AlipayClient:
    """A typed face on python-alipay-sdk, which ships no type information."""

    def __init__(
        self,
        *,
        app_id: str,
        private_key_pem: str,
        public_key_pem: str,
        gateway: str,
        timeout: float,
    ) -> None:
        self._sdk: Any = AliPay(
            appid=app_id,
            app_private_key_string=private_key_pem,
            alipay_public_key_string=public_key_pem,
            sign_type="RSA2",
            config=AliPayConfig(timeout=timeout),
        )
        # The SDK only knows production and its sandbox; self-hosted proxies and tests
        # need another gateway, and `_gateway` is the one attribute its calls read.
        self._sdk._gateway = gateway
        self.gateway = gateway

    def page_pay_url(self, biz: dict[str, Any], *, notify_url: str, return_url: str | None) -> str:
        query: str = self._sdk.client_api(
            "alipay.trade.page.pay",
            biz,
            notify_url=notify_url,
            return_url=return_url,
            timestamp=_now(),
        )
        return f"{self.gateway}?{query}"

    async def call(self, api: str, biz: dict[str, Any], **extra: str) -> dict[str, Any]:
        """Call `api` and return its verified `*_response` object."""

        def blocking() -> Any:
            return self._sdk.server_api(api, biz, timestamp=_now(), **extra)

        try:
            result = await asyncio.to_thread(blocking)
        except AliPayValidationError:
            raise PaymentProviderError("alipay", f"{api}: answer signature invalid") from None
        except AliPayException:
            # The SDK's message embeds the raw answer; keep it out of logs.
            raise PaymentProviderError("alipay", f"{api}: gateway error") from None
        except (URLError, OSError, ValueError) as exc:
            raise PaymentProviderError("alipay", f"{api}: {type(exc).__name__}") from None
        except Exception as exc:
            # The SDK trips over odd answers with KeyError/AttributeError; to callers that
            # is still "the gateway answered something unusable", not a bug of ours.
            raise PaymentProviderError("alipay", f"{api}: {type(exc).__name__}") from None
        if not isinstance(result, dict):
            raise PaymentProviderError("alipay", f"{api}: answer is not an object")
        return result


def _now() -> str:
    # The SDK stamps requests with the host's local time; Alipay reads Beijing time.
    return datetime.now(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S")


class AlipayProvider:
    name = "alipay"

    def __init__(
        self,
        *,
        app_id: str,
        private_key: str,
        alipay_public_key: str,
        notify_url: str,
        return_url: str | None = None,
        seller_id: str | None = None,
        gateway: str = "https://openapi.alipay.com/gateway.do",
        method: Literal["page", "qr"] = "page",
        timeout_s: float = 15.0,
    ) -> None:
        self._app_id = app_id
        self._seller_id = seller_id
        self._notify_url = notify_url
        self._return_url = return_url
        self._method = method
        self._public_key = load_rsa_public_key(alipay_public_key)
        private_pem = (
            load_rsa_private_key(private_key)
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            .decode()
        )
        public_pem = self._public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self._client = _AlipayClient(
            app_id=app_id,
            private_key_pem=private_pem,
            public_key_pem=public_pem,
            gateway=gateway,
            timeout=timeout_s,
        )

    async def create(self, order: PaymentOrder) -> PayRequest:
        if order.currency != "CNY":
            raise PaymentProviderError(self.name, f"currency {order.currency} not supported")
        biz: dict[str, Any] = {
            "out_trade_no": order.order_no,
            "total_amount": format_yuan(order.amount),
            "subject": order.subject,
            "time_expire": order.expires_at.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S"),
        }
        if self._method == "page":
            biz["product_code"] = "FAST_INSTANT_TRADE_PAY"
            return_url = (
                self._return_url.replace("{order_no}", order.order_no) if self._return_url else None
            )
            url = self._client.page_pay_url(biz, notify_url=self._notify_url, return_url=return_url)
            return PayRequest(pay_url=url)
        answer = await self._client.call("alipay.trade.precreate", biz, notify_url=self._notify_url)
        qr = answer.get("qr_code")
        if answer.get("code") != SUCCESS_CODE or not isinstance(qr, str) or not qr:
            raise PaymentProviderError(self.name, f"precreate refused: {_sub_code(answer)}")
        return PayRequest(pay_url=None, qr_code=qr)

    def verify_notify(
        self,
        *,
        method: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        body: bytes,
    ) -> PaymentNotice:
        params = parse_form(body) if body else dict(query)
        missing = [f for f in _NOTIFY_FIELDS if not params.get(f)]
        if missing:
            raise PaymentRejected(PaymentErrorCode.MALFORMED, f"missing {', '.join(missing)}")
        if params.get("sign_type", "RSA2") != "RSA2":
            # RSA (SHA-1) is what a downgrade attempt would ask for.
            raise PaymentRejected(PaymentErrorCode.UNSUPPORTED_SIGNATURE, "sign_type not RSA2")
        signature = b64decode_strict(params["sign"], "sign")
        try:
            self._public_key.verify(
                signature,
                alipay_sign_content(params).encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise PaymentRejected(
                PaymentErrorCode.BAD_SIGNATURE, "alipay signature mismatch"
            ) from None
        if params["app_id"] != self._app_id:
            raise PaymentRejected(PaymentErrorCode.WRONG_MERCHANT, "app_id is not ours")
        if self._seller_id is not None and params.get("seller_id") != self._seller_id:
            raise PaymentRejected(PaymentErrorCode.WRONG_MERCHANT, "seller_id is not ours")
        return PaymentNotice(
            provider=self.name,
            order_no=params["out_trade_no"],
            trade_no=params["trade_no"],
            amount=parse_yuan(params["total_amount"]),
            currency="CNY",
            paid=params["trade_status"] in PAID_STATUSES,
        )

    def reply_ok(self) -> CallbackReply:
        return CallbackReply(200, b"success", "text/plain")

    def reply_error(self) -> CallbackReply:
        return CallbackReply(200, b"fail", "text/plain")

    async def query(self, order_no: str) -> PaymentNotice | None:
        answer = await self._client.call("alipay.trade.query", {"out_trade_no": order_no})
        if answer.get("code") != SUCCESS_CODE:
            if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                return None
            raise PaymentProviderError(self.name, f"query refused: {_sub_code(answer)}")
        try:
            if answer["out_trade_no"] != order_no:
                raise PaymentProviderError(self.name, "query answered another order")
            return PaymentNotice(
                provider=self.name,
                order_no=order_no,
                trade_no=str(answer["trade_no"]),
                amount=parse_yuan(str(answer["total_amount"])),
                currency="CNY",
                paid=answer.get("trade_status") in PAID_STATUSES,
            )
        except (KeyError, PaymentRejected) as exc:
            raise PaymentProviderError(self.name, "query answer malformed") from exc

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
        answer = await self._client.call(
            "alipay.trade.refund",
            {
                "out_trade_no": order_no,
                "trade_no": trade_no,
                "refund_amount": format_yuan(amount),
                # Alipay deduplicates on out_request_no: a retried refund is not paid twice.
                "out_request_no": refund_no,
                "refund_reason": reason,
            },
        )
        return RefundResult(
            self.name, refund_no, amount, succeeded=answer.get("code") == SUCCESS_CODE
        )


def _sub_code(answer: Mapping[str, Any]) -> str:
    return str(answer.get("sub_code") or answer.get("code") or "unknown")[:100]
