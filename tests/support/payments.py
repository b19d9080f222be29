"""The provider side of payments, for tests: keys, signed callbacks, loopback gateways.

Everything here is written from the providers' documentation, independently of
`engine.payments`, so a test that passes shows the engine agrees with the protocol and
not merely with itself. The gateways are real HTTP servers on 127.0.0.1 (a thread each),
which check our requests' signatures as the real gateway would and sign their answers.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

# --- keys and certificates -------------------------------------------------------------


@dataclass(frozen=True)
class RsaKeyPair:
    private_key: rsa.RSAPrivateKey
    private_pem: str  # PKCS#8
    public_pem: str  # SubjectPublicKeyInfo

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    @property
    def private_base64(self) -> str:
        """The bare base64 body, as Alipay's and WeChat's consoles hand keys out."""
        return "".join(self.private_pem.strip().splitlines()[1:-1])

    @property
    def public_base64(self) -> str:
        return "".join(self.public_pem.strip().splitlines()[1:-1])


def generate_rsa(bits: int = 2048) -> RsaKeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return RsaKeyPair(key, private_pem, public_pem)


def self_signed_certificate(key: rsa.RSAPrivateKey, common_name: str) -> tuple[str, str]:
    """A certificate for `key` and its serial as upper-case hex, as WeChat shows merchant
    API certificates (the serial is what `serial_no` in Authorization names)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), f"{cert.serial_number:X}"


def rsa2_sign(private_key: rsa.RSAPrivateKey, message: str) -> str:
    signature = private_key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def rsa2_verify(public_key: rsa.RSAPublicKey, message: str, signature_b64: str) -> bool:
    try:
        public_key.verify(
            base64.b64decode(signature_b64), message.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def form_body(fields: Mapping[str, str]) -> bytes:
    return urlencode(dict(fields)).encode()


# --- 易支付 V1 --------------------------------------------------------------------------


def epay_signature(params: Mapping[str, str], key: str) -> str:
    content = "&".join(
        f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type") and params[k]
    )
    return hashlib.md5((content + key).encode()).hexdigest()


def epay_notify_query(key: str, **fields: str) -> dict[str, str]:
    """The query string of a V1 payment callback, signed with the merchant `key`.

    Defaults describe a paid ¥19.90 order; any field can be overridden (or set to "" to
    leave it out of the signature, as gateways do with empty values).
    """
    params = {
        "pid": "1001",
        "trade_no": f"2026{secrets.randbelow(10**12):012d}",
        "out_trade_no": "K0001",
        "type": "alipay",
        "name": "VIP month",
        "money": "19.90",
        "trade_status": "TRADE_SUCCESS",
        **fields,
    }
    return {**params, "sign": epay_signature(params, key), "sign_type": "MD5"}


# --- Alipay ------------------------------------------------------------------------------


def alipay_sign_content(params: Mapping[str, str]) -> str:
    return "&".join(
        f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type") and params[k]
    )


def alipay_notify_form(private_key_pem: str, **fields: str) -> dict[str, str]:
    """The form fields of an Alipay async notification signed with Alipay's private key.

    Defaults describe a paid ¥19.90 trade for app "2021000000000001".
    """
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    now = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m-%d %H:%M:%S")
    params = {
        "notify_time": now,
        "notify_type": "trade_status_sync",
        "notify_id": secrets.token_hex(16),
        "charset": "utf-8",
        "version": "1.0",
        "app_id": "2021000000000001",
        "seller_id": "2088000000000001",
        "trade_no": f"2026{secrets.randbelow(10**20):020d}",
        "out_trade_no": "K0001",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "19.90",
        "receipt_amount": "19.90",
        "subject": "VIP month",
        "gmt_payment": now,
        **fields,
    }
    return {**params, "sign_type": "RSA2", "sign": rsa2_sign(key, alipay_sign_content(params))}


# --- WeChat Pay v3 -----------------------------------------------------------------------


def wechat_transaction(**fields: Any) -> dict[str, Any]:
    """A decrypted TRANSACTION.SUCCESS resource; defaults: paid 1990 fen."""
    return {
        "mchid": "1900000001",
        "appid": "wx0000000000000001",
        "out_trade_no": "K0001",
        "transaction_id": f"42000{secrets.randbelow(10**23):023d}",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": "2026-11-22T15:00:00+08:00",
        "payer": {"openid": "o000000000000000000000000001"},
        "amount": {"total": 1990, "payer_total": 1990, "currency": "CNY", "payer_currency": "CNY"},
        **fields,
    }


def wechat_headers(
    platform_private_key: rsa.RSAPrivateKey,
    serial: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The Wechatpay-* headers WeChat puts on a callback or an API answer."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    message = f"{ts}\n{nonce}\n{body.decode()}\n"
    return {
        "Wechatpay-Timestamp": ts,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": rsa2_sign(platform_private_key, message),
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        "Content-Type": "application/json",
    }


def wechat_notify(
    platform_private_key: rsa.RSAPrivateKey,
    serial: str,
    apiv3_key: str,
    resource: Mapping[str, Any],
    *,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """A payment callback: `resource` (a transaction) sealed with the APIv3 key, signed
    with the platform key under `serial`. Returns (headers, body)."""
    nonce = secrets.token_hex(6)  # WeChat uses 12-character nonces for the AEAD
    associated_data = "transaction"
    ciphertext = AESGCM(apiv3_key.encode()).encrypt(
        nonce.encode(),
        json.dumps(resource, ensure_ascii=False).encode(),
        associated_data.encode(),
    )
    envelope = {
        "id": secrets.token_hex(18),
        "create_time": "2026-11-22T15:00:01+08:00",
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "associated_data": associated_data,
            "nonce": nonce,
        },
    }
    body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    return wechat_headers(platform_private_key, serial, body, timestamp=timestamp), body


# --- a loopback gateway -----------------------------------------------------------------


@dataclass(frozen=True)
class GatewayRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw_query: str = ""

    @property
    def target(self) -> str:
        """Path and query exactly as sent (what WeChat signs)."""
        return self.path + (f"?{self.raw_query}" if self.raw_query else "")

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class GatewayResponse:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, **headers: str) -> GatewayResponse:
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        return cls(status, body, {"Content-Type": "application/json", **headers})


Handler = Callable[[GatewayRequest], GatewayResponse]


class GatewayServer:
    """A real HTTP server on 127.0.0.1 answering with `handler`; records every request.

    Use as a context manager or call `start()`/`stop()` from a fixture. Set `fail_status`
    to make every request answer that status with an empty body (an outage).
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[GatewayRequest] = []
        self.fail_status: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> GatewayServer:
        gateway = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = GatewayRequest(
                    method=self.command,
                    path=split.path,
                    query=dict(parse_qsl(split.query, keep_blank_values=True)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                    raw_query=split.query,
                )
                gateway.requests.append(request)
                if gateway.fail_status is not None:
                    response = GatewayResponse(gateway.fail_status)
                else:
                    try:
                        response = gateway.handler(request)
                    except Exception as exc:  # a test's handler bug: show it, answer 599
                        response = GatewayResponse(599, repr(exc).encode())
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serving(gateway: EpayGateway | AlipayGateway | WechatGateway) -> Iterator[str]:
    """Run a fake provider gateway for the duration; yields its base URL."""
    with GatewayServer(gateway.handle) as server:
        gateway.server = server
        yield server.url


# --- fake provider gateways ---------------------------------------------------------------


@dataclass
class Trade:
    """A trade as the fake gateway remembers it. `amount` in fen."""

    order_no: str
    amount: int
    trade_no: str = field(default_factory=lambda: f"T{secrets.token_hex(8)}")
    paid: bool = False
    refunded: int = 0


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _fen(yuan: str) -> int:
    whole, _, frac = yuan.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


class EpayGateway:
    """易支付 V1: mapi.php (create), api.php?act=order (query), api.php?act=refund."""

    def __init__(self, pid: str, key: str) -> None:
        self.pid, self.key = pid, key
        self.trades: dict[str, Trade] = {}
        self.server: GatewayServer | None = None

    def handle(self, request: GatewayRequest) -> GatewayResponse:
        if request.path == "/mapi.php":
            params = request.form()
            if params.get("pid") != self.pid:
                return GatewayResponse.json({"code": -1, "msg": "商户不存在"})
            if epay_signature(params, self.key) != params.get("sign"):
                return GatewayResponse.json({"code": -1, "msg": "签名校验失败"})
            trade = Trade(params["out_trade_no"], _fen(params["money"]))
            self.trades[trade.order_no] = trade
            return GatewayResponse.json(
                {
                    "code": 1,
                    "msg": "succ",
                    "trade_no": trade.trade_no,
                    "payurl": f"https://pay.example/pay/{trade.trade_no}",
                    "qrcode": f"https://qr.example/{trade.trade_no}",
                }
            )
        if request.path == "/api.php" and request.query.get("act") == "order":
            params = request.query
            if params.get("pid") != self.pid or params.get("key") != self.key:
                return GatewayResponse.json({"code": -3, "msg": "KEY校验失败"})
            known = self.trades.get(params.get("out_trade_no", ""))
            if known is None:
                return GatewayResponse.json({"code": -1, "msg": "订单号不存在"})
            trade = known
            return GatewayResponse.json(
                {
                    "code": 1,
                    "msg": "查询订单号成功",
                    "trade_no": trade.trade_no,
                    "out_trade_no": trade.order_no,
                    "type": "alipay",
                    "pid": self.pid,
                    "name": "VIP month",
                    "money": _yuan(trade.amount),
                    "status": 1 if trade.paid else 0,
                }
            )
        if request.path == "/api.php" and request.query.get("act") == "refund":
            params = request.form()
            if params.get("pid") != self.pid or params.get("key") != self.key:
                return GatewayResponse.json({"code": -3, "msg": "KEY校验失败"})
            found = [t for t in self.trades.values() if t.trade_no == params.get("trade_no")]
            if not found or not found[0].paid:
                return GatewayResponse.json({"code": -1, "msg": "订单不存在或未支付"})
            money = _fen(params["money"])
            if found[0].refunded + money > found[0].amount:
                return GatewayResponse.json({"code": -1, "msg": "退款金额超过订单金额"})
            found[0].refunded += money
            return GatewayResponse.json({"code": 1, "msg": "退款成功"})
        return GatewayResponse(404, b"not found")


class AlipayGateway:
    """Alipay's gateway.do for precreate, query and refund, RSA2 both ways."""

    def __init__(self, app_id: str, app_public_key: rsa.RSAPublicKey, alipay_key: RsaKeyPair):
        self.app_id = app_id
        self.app_public_key = app_public_key
        self.alipay_key = alipay_key
        self.trades: dict[str, Trade] = {}
        self.server: GatewayServer | None = None

    def handle(self, request: GatewayRequest) -> GatewayResponse:
        params = request.query
        method = params.get("method", "")
        response_name = method.replace(".", "_") + "_response"
        # Requests are signed over every parameter but `sign` (sign_type included).
        content = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign")
        if params.get("app_id") != self.app_id:
            return self._answer(
                response_name,
                {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-app-id"},
            )
        if not rsa2_verify(self.app_public_key, content, params.get("sign", "")):
            return self._answer(
                response_name,
                {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature"},
            )
        biz = json.loads(params.get("biz_content", "{}"))
        trade: Trade | None
        if method == "alipay.trade.precreate":
            trade = Trade(biz["out_trade_no"], _fen(biz["total_amount"]))
            self.trades[trade.order_no] = trade
            return self._answer(
                response_name,
                {
                    "code": "10000",
                    "msg": "Success",
                    "out_trade_no": trade.order_no,
                    "qr_code": f"https://qr.alipay.com/{trade.trade_no}",
                },
            )
        if method == "alipay.trade.query":
            trade = self.trades.get(biz.get("out_trade_no", ""))
            if trade is None:
                return self._answer(
                    response_name,
                    {
                        "code": "40004",
                        "msg": "Business Failed",
                        "sub_code": "ACQ.TRADE_NOT_EXIST",
                        "sub_msg": "交易不存在",
                    },
                )
            return self._answer(
                response_name,
                {
                    "code": "10000",
                    "msg": "Success",
                    "trade_no": trade.trade_no,
                    "out_trade_no": trade.order_no,
                    "trade_status": "TRADE_SUCCESS" if trade.paid else "WAIT_BUYER_PAY",
                    "total_amount": _yuan(trade.amount),
                },
            )
        if method == "alipay.trade.refund":
            trade = self.trades.get(biz.get("out_trade_no", ""))
            money = _fen(biz["refund_amount"])
            if trade is None or not trade.paid or trade.refunded + money > trade.amount:
                return self._answer(
                    response_name,
                    {
                        "code": "40004",
                        "msg": "Business Failed",
                        "sub_code": "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                    },
                )
            trade.refunded += money
            return self._answer(
                response_name,
                {
                    "code": "10000",
                    "msg": "Success",
                    "trade_no": trade.trade_no,
                    "out_trade_no": trade.order_no,
                    "fund_change": "Y",
                    "refund_fee": _yuan(trade.refunded),
                },
            )
        return GatewayResponse(404, b"unknown method")

    def _answer(self, response_name: str, inner: Mapping[str, Any]) -> GatewayResponse:
        # Alipay signs the exact text of the `*_response` object inside the answer.
        text = json.dumps(inner, ensure_ascii=False, separators=(",", ":"))
        sign = rsa2_sign(self.alipay_key.private_key, text)
        body = f'{{"{response_name}":{text},"sign":"{sign}"}}'.encode()
        return GatewayResponse(200, body, {"Content-Type": "text/html;charset=utf-8"})


_AUTH = re.compile(r'(\w+)="([^"]*)"')


class WechatGateway:
    """WeChat Pay v3: native order, query by out_trade_no, domestic refund."""

    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        merchant_public_key: rsa.RSAPublicKey,
        merchant_serial: str,
        platform_key: RsaKeyPair,
        platform_key_id: str,
    ) -> None:
        self.mchid, self.appid = mchid, appid
        self.merchant_public_key = merchant_public_key
        self.merchant_serial = merchant_serial
        self.platform_key = platform_key
        self.platform_key_id = platform_key_id
        self.trades: dict[str, Trade] = {}
        self.server: GatewayServer | None = None
        # Tests may set this to sign answers with another key (a man in the middle).
        self.answer_key: rsa.RSAPrivateKey | None = None

    def handle(self, request: GatewayRequest) -> GatewayResponse:
        trade: Trade | None
        problem = self._check_authorization(request)
        if problem:
            return self._answer({"code": "SIGN_ERROR", "message": problem}, 401)
        if request.method == "POST" and request.path == "/v3/pay/transactions/native":
            body = request.json()
            if body["mchid"] != self.mchid or body["appid"] != self.appid:
                return self._answer({"code": "PARAM_ERROR", "message": "mchid/appid"}, 400)
            trade = Trade(body["out_trade_no"], body["amount"]["total"])
            self.trades[trade.order_no] = trade
            return self._answer({"code_url": f"weixin://wxpay/bizpayurl?pr={trade.trade_no}"})
        prefix = "/v3/pay/transactions/out-trade-no/"
        if request.method == "GET" and request.path.startswith(prefix):
            trade = self.trades.get(request.path.removeprefix(prefix))
            if trade is None or request.query.get("mchid") != self.mchid:
                return self._answer({"code": "ORDER_NOT_EXIST", "message": "订单不存在"}, 404)
            return self._answer(
                wechat_transaction(
                    mchid=self.mchid,
                    appid=self.appid,
                    out_trade_no=trade.order_no,
                    transaction_id=trade.trade_no if trade.paid else "",
                    trade_state="SUCCESS" if trade.paid else "NOTPAY",
                    amount={"total": trade.amount, "currency": "CNY"},
                )
            )
        if request.method == "POST" and request.path == "/v3/refund/domestic/refunds":
            body = request.json()
            found = [t for t in self.trades.values() if t.trade_no == body.get("transaction_id")]
            refund = body["amount"]["refund"]
            if not found or not found[0].paid or found[0].refunded + refund > found[0].amount:
                return self._answer({"code": "NOT_ENOUGH", "message": "余额不足"}, 403)
            found[0].refunded += refund
            return self._answer(
                {
                    "refund_id": f"50000{secrets.randbelow(10**20):020d}",
                    "out_refund_no": body["out_refund_no"],
                    "transaction_id": found[0].trade_no,
                    "out_trade_no": found[0].order_no,
                    "status": "PROCESSING",
                    "amount": {"refund": refund, "total": found[0].amount, "currency": "CNY"},
                }
            )
        return self._answer({"code": "NOT_FOUND", "message": "no such API"}, 404)

    def _check_authorization(self, request: GatewayRequest) -> str | None:
        scheme, _, rest = request.headers.get("authorization", "").partition(" ")
        if scheme != "WECHATPAY2-SHA256-RSA2048":
            return "scheme"
        parts = dict(_AUTH.findall(rest))
        if parts.get("mchid") != self.mchid or parts.get("serial_no") != self.merchant_serial:
            return "mchid or serial_no"
        if request.headers.get("wechatpay-serial") != self.platform_key_id:
            return "Wechatpay-Serial"
        message = (
            f"{request.method}\n{request.target}\n{parts.get('timestamp')}\n"
            f"{parts.get('nonce_str')}\n{request.body.decode()}\n"
        )
        if not rsa2_verify(self.merchant_public_key, message, parts.get("signature", "")):
            return "signature"
        return None

    def _answer(self, data: Any, status: int = 200) -> GatewayResponse:
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        key = self.answer_key or self.platform_key.private_key
        return GatewayResponse(status, body, wechat_headers(key, self.platform_key_id, body))
