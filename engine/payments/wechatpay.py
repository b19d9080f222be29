"""WeChat Pay API v3 (微信支付), Native QR payments, in "WeChat Pay public key" mode.

Why not wechatpayv3's `WeChatPay` for the HTTP calls: it sends blocking `requests` to a
hard-coded gateway (`Core._gate_way`, private), checks no timestamp on answers or
callbacks, and raises bare `Exception` for everything. The protocol is small, so it is
spoken here with httpx and `cryptography`; the tests check that wechatpayv3 accepts the
callbacks our test gateway signs, so both agree on the wire format.

Public-key mode (the platform public key and its `PUB_KEY_ID_...`) needs no platform
certificate download; a callback or answer signed under any other serial is refused.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine._core import constant_time_eq
from engine.payments.base import (
    CHINA_TZ,
    MAX_AMOUNT,
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
    load_rsa_private_key,
    load_rsa_public_key,
    lower_headers,
)

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
# WeChat's own recommendation: refuse anything signed more than five minutes away.
MAX_SKEW_S = 300
PAID_STATE = "SUCCESS"
REFUND_ACCEPTED = frozenset({"SUCCESS", "PROCESSING"})


def wechat_sign(private_key: RSAPrivateKey, *lines: str) -> str:
    """RSA-SHA256 over the lines, each followed by `\\n`, base64 (every v3 signature)."""
    message = "".join(f"{line}\n" for line in lines).encode()
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def decrypt_resource(apiv3_key: bytes, resource: Mapping[str, Any]) -> bytes:
    """Open a callback's AEAD_AES_256_GCM `resource`; InvalidTag when the key or data is wrong."""
    return AESGCM(apiv3_key).decrypt(
        str(resource["nonce"]).encode(),
        base64.b64decode(str(resource["ciphertext"]), validate=True),
        str(resource.get("associated_data") or "").encode(),
    )


class WechatPayProvider:
    name = "wechatpay"

    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        private_key: str,
        cert_serial: str,
        apiv3_key: str,
        platform_public_key: str,
        platform_public_key_id: str,
        notify_url: str,
        gateway: str = "https://api.mch.weixin.qq.com",
        timeout_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._mchid = mchid
        self._appid = appid
        self._private_key = load_rsa_private_key(private_key)
        self._cert_serial = cert_serial
        self._apiv3_key = apiv3_key.encode()
        if len(self._apiv3_key) != 32:
            raise ValueError("the APIv3 key must be 32 bytes")
        self._platform_key: RSAPublicKey = load_rsa_public_key(platform_public_key)
        self._platform_key_id = platform_public_key_id
        self._notify_url = notify_url
        self._gateway = gateway.rstrip("/")
        self._timeout = timeout_s
        self._clock = clock
        # Loading the CA bundle costs ~0.1 s; do it once, not per request. A client per
        # request (rather than one held) keeps the provider free of event-loop ties.
        self._tls = httpx.create_ssl_context()

    async def create(self, order: PaymentOrder) -> PayRequest:
        body: dict[str, Any] = {
            "appid": self._appid,
            "mchid": self._mchid,
            "description": order.subject[:127],
            "out_trade_no": order.order_no,
            "time_expire": order.expires_at.astimezone(CHINA_TZ).isoformat(timespec="seconds"),
            "notify_url": self._notify_url,
            "amount": {"total": order.amount, "currency": order.currency},
        }
        if order.client_ip:
            body["scene_info"] = {"payer_client_ip": order.client_ip}
        status, data = await self._call("POST", "/v3/pay/transactions/native", body)
        code_url = data.get("code_url")
        if status != 200 or not isinstance(code_url, str) or not code_url:
            raise PaymentProviderError(self.name, f"native order refused: {_code(status, data)}")
        return PayRequest(pay_url=None, qr_code=code_url)

    def verify_notify(
        self,
        *,
        method: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        body: bytes,
    ) -> PaymentNotice:
        self._verify_signed(lower_headers(headers), body, what="callback")
        try:
            envelope = json.loads(body)
            resource = envelope["resource"]
            algorithm = resource["algorithm"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PaymentRejected(PaymentErrorCode.MALFORMED, "callback body malformed") from exc
        if algorithm != "AEAD_AES_256_GCM":
            raise PaymentRejected(PaymentErrorCode.UNSUPPORTED_SIGNATURE, "unknown algorithm")
        try:
            transaction = json.loads(decrypt_resource(self._apiv3_key, resource))
        except (InvalidTag, ValueError, KeyError, TypeError):
            raise PaymentRejected(
                PaymentErrorCode.DECRYPTION_FAILED, "resource did not decrypt"
            ) from None
        if not isinstance(transaction, dict):
            raise PaymentRejected(PaymentErrorCode.MALFORMED, "resource is not an object")
        return self._notice(transaction)

    def reply_ok(self) -> CallbackReply:
        return CallbackReply(204, b"", "application/json")

    def reply_error(self) -> CallbackReply:
        # 5xx: WeChat retries, which is right when we failed and harmless when it was forged.
        return CallbackReply(500, b'{"code":"FAIL","message":"failed"}', "application/json")

    async def query(self, order_no: str) -> PaymentNotice | None:
        path = (
            f"/v3/pay/transactions/out-trade-no/{quote(order_no, safe='')}"
            f"?mchid={quote(self._mchid, safe='')}"
        )
        status, data = await self._call("GET", path, None)
        if status == 404 or data.get("code") == "ORDER_NOT_EXIST":
            return None
        if status != 200:
            raise PaymentProviderError(self.name, f"query refused: {_code(status, data)}")
        try:
            notice = self._notice(data)
        except PaymentRejected as exc:
            raise PaymentProviderError(self.name, f"query answer: {exc.reason}") from None
        if notice.order_no != order_no:
            raise PaymentProviderError(self.name, "query answered another order")
        return notice

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
        body = {
            "transaction_id": trade_no,
            "out_refund_no": refund_no,
            "reason": reason[:80],
            "amount": {"refund": amount, "total": total, "currency": "CNY"},
        }
        status, data = await self._call("POST", "/v3/refund/domestic/refunds", body)
        if status != 200:
            # A business refusal (NOT_ENOUGH, ...) is an answer, not an outage.
            if 400 <= status < 500:
                return RefundResult(self.name, refund_no, amount, succeeded=False)
            raise PaymentProviderError(self.name, f"refund refused: {_code(status, data)}")
        return RefundResult(
            self.name, refund_no, amount, succeeded=data.get("status") in REFUND_ACCEPTED
        )

    def _notice(self, data: Mapping[str, Any]) -> PaymentNotice:
        """A transaction object (decrypted callback or query answer) as a notice."""
        if data.get("mchid") != self._mchid or data.get("appid") != self._appid:
            raise PaymentRejected(PaymentErrorCode.WRONG_MERCHANT, "mchid or appid is not ours")
        amount = data.get("amount")
        out_trade_no = data.get("out_trade_no")
        if not isinstance(amount, dict) or not isinstance(out_trade_no, str) or not out_trade_no:
            raise PaymentRejected(PaymentErrorCode.MALFORMED, "transaction fields missing")
        total, currency = amount.get("total"), amount.get("currency")
        # JSON integers only: a float or bool total would be a different protocol.
        if type(total) is not int or not 0 < total <= MAX_AMOUNT:
            raise PaymentRejected(PaymentErrorCode.BAD_AMOUNT, "amount.total out of range")
        if not isinstance(currency, str) or not currency:
            raise PaymentRejected(PaymentErrorCode.MALFORMED, "amount.currency missing")
        paid = data.get("trade_state") == PAID_STATE
        # An unpaid order has no transaction yet; a paid one always has.
        trade_no = data.get("transaction_id", "")
        if not isinstance(trade_no, str) or (paid and not trade_no):
            raise PaymentRejected(PaymentErrorCode.MALFORMED, "transaction_id missing")
        return PaymentNotice(self.name, out_trade_no, trade_no, total, currency, paid)

    def _verify_signed(self, headers: Mapping[str, str], body: bytes, *, what: str) -> None:
        """Check the Wechatpay-* headers over `body`: type, serial, freshness, signature."""
        signature_type = headers.get("wechatpay-signature-type", SIGNATURE_TYPE)
        if signature_type != SIGNATURE_TYPE:
            raise PaymentRejected(PaymentErrorCode.UNSUPPORTED_SIGNATURE, f"{what} signature type")
        serial = headers.get("wechatpay-serial", "")
        if not constant_time_eq(serial.encode(), self._platform_key_id.encode()):
            raise PaymentRejected(PaymentErrorCode.UNKNOWN_KEY, f"{what} signed by unknown key")
        timestamp, nonce = headers.get("wechatpay-timestamp", ""), headers.get("wechatpay-nonce")
        if not timestamp.isdigit() or len(timestamp) > 12 or not nonce:
            raise PaymentRejected(PaymentErrorCode.MALFORMED, f"{what} timestamp or nonce missing")
        if abs(self._clock() - int(timestamp)) > MAX_SKEW_S:
            raise PaymentRejected(PaymentErrorCode.STALE, f"{what} timestamp out of window")
        signature = b64decode_strict(headers.get("wechatpay-signature", ""), "signature")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PaymentRejected(PaymentErrorCode.MALFORMED, f"{what} is not UTF-8") from None
        message = f"{timestamp}\n{nonce}\n{text}\n".encode()
        try:
            self._platform_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise PaymentRejected(
                PaymentErrorCode.BAD_SIGNATURE, f"{what} signature mismatch"
            ) from None

    async def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        """One signed v3 request; returns the status and the (verified, if 2xx) JSON answer."""
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")) if body else ""
        timestamp, nonce = str(int(self._clock())), secrets.token_hex(16)
        signature = wechat_sign(self._private_key, method, path, timestamp, nonce, payload)
        authorization = (
            f'{SIGNATURE_TYPE} mchid="{self._mchid}",nonce_str="{nonce}",'
            f'signature="{signature}",timestamp="{timestamp}",serial_no="{self._cert_serial}"'
        )
        headers = {
            "Authorization": authorization,
            "Accept": "application/json",
            "Content-Type": "application/json",
            "Wechatpay-Serial": self._platform_key_id,
            "User-Agent": "kami",
        }
        try:
            async with httpx.AsyncClient(verify=self._tls, timeout=self._timeout) as http:
                response = await http.request(
                    method, self._gateway + path, content=payload.encode(), headers=headers
                )
        except httpx.HTTPError as exc:
            raise PaymentProviderError(
                self.name, f"{path} unreachable: {type(exc).__name__}"
            ) from None
        if response.is_success:
            # An answer that does not verify could come from anyone on the path.
            try:
                self._verify_signed(
                    lower_headers(response.headers), response.content, what="answer"
                )
            except PaymentRejected as exc:
                raise PaymentProviderError(self.name, f"{path}: {exc.reason}") from None
        if not response.content:
            return response.status_code, {}
        try:
            data = response.json()
        except ValueError:
            raise PaymentProviderError(self.name, f"{path} answered non-JSON") from None
        if not isinstance(data, dict):
            raise PaymentProviderError(self.name, f"{path} answered non-object JSON")
        return response.status_code, data


def _code(status: int, data: Mapping[str, Any]) -> str:
    return f"HTTP {status} {str(data.get('code', ''))[:64]}".strip()
