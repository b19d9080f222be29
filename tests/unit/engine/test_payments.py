"""Payment providers without a network: amounts, signatures, callbacks, refusals.

Callbacks are produced by `tests.support.payments`, written from the providers' docs,
and for Alipay and WeChat also checked against the providers' Python SDKs, so these
tests pin the engine to the protocol rather than to itself.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from alipay import AliPay  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from wechatpayv3 import WeChatPay, WeChatPayType  # type: ignore[import-untyped]

from engine.payments import (
    PaymentNotice,
    PaymentOrder,
    PaymentRejected,
    build_providers,
    format_yuan,
    parse_yuan,
)
from engine.payments.alipay import AlipayProvider
from engine.payments.base import MAX_AMOUNT, load_rsa_private_key, load_rsa_public_key
from engine.payments.epay import EpayProvider
from engine.payments.sandbox import SandboxProvider
from engine.payments.wechatpay import WechatPayProvider
from engine.settings import Settings
from tests.support.payments import (
    RsaKeyPair,
    alipay_notify_form,
    epay_notify_query,
    epay_signature,
    form_body,
    generate_rsa,
    rsa2_verify,
    self_signed_certificate,
    wechat_notify,
    wechat_transaction,
)

EPAY_KEY = "epay-merchant-key-0123456789"
APP_ID = "2021000000000001"
SELLER_ID = "2088000000000001"
MCHID = "1900000001"
WX_APPID = "wx0000000000000001"
APIV3_KEY = "0123456789abcdef0123456789abcdef"
PUB_KEY_ID = "PUB_KEY_ID_0000000000000001"

ORDER = PaymentOrder(
    order_no="K0001",
    amount=1990,
    currency="CNY",
    subject="VIP month",
    expires_at=datetime(2026, 11, 22, 7, 30, tzinfo=UTC),
    client_ip="203.0.113.9",
)


@pytest.fixture(scope="module")
def keys() -> dict[str, RsaKeyPair]:
    """One key per role; RSA generation is the slow part of this module."""
    return {role: generate_rsa() for role in ("app", "alipay", "merchant", "platform", "evil")}


def no_http(body: bytes = b"", headers: Mapping[str, str] | None = None) -> Any:
    """verify_notify's arguments for a POSTed callback."""
    return {"method": "POST", "headers": headers or {}, "query": {}, "body": body}


# --- amounts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("0.01", 1),
        ("0.1", 10),
        ("12.3", 1230),
        ("12.30", 1230),
        ("19.90", 1990),
        ("100", 10000),
        ("10000000000000", MAX_AMOUNT),
        ("0.29", 29),  # 0.29 * 100 is 28.999999999999996 in float
        ("1.15", 115),
    ],
)
def test_yuan_parses_to_exact_fen(text: str, fen: int) -> None:
    assert parse_yuan(text) == fen


@pytest.mark.parametrize(
    "text",
    [
        "12.345",
        "0.001",
        "-1",
        "-0.01",
        "+1",
        "0",
        "0.00",
        "1e3",
        "1E2",
        " 1.00",
        "1.00 ",
        "1,000.00",
        "01.00",
        "1.",
        ".5",
        "",
        "NaN",
        "Infinity",
        "\uff11\uff12",  # full-width digits: Decimal would take them
        "10000000000000.01",
        "99999999999999.99",
        "9" * 400,
        "0x10",
    ],
)
def test_bad_yuan_is_rejected(text: str) -> None:
    with pytest.raises(PaymentRejected) as caught:
        parse_yuan(text)
    assert caught.value.code == "bad_amount"


@given(st.integers(min_value=1, max_value=MAX_AMOUNT))
def test_format_yuan_round_trips(fen: int) -> None:
    assert parse_yuan(format_yuan(fen)) == fen


@given(st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False))
def test_three_decimals_are_always_rejected(value: Decimal) -> None:
    # Even "1.000": a gateway that pads to three places is not speaking yuan.
    with pytest.raises(PaymentRejected):
        parse_yuan(f"{value:.3f}")


def test_format_yuan_refuses_out_of_range() -> None:
    for fen in (0, -1, MAX_AMOUNT + 1):
        with pytest.raises(ValueError, match="range"):
            format_yuan(fen)


# --- keys ------------------------------------------------------------------------------------


def test_keys_load_from_pem_base64_or_file(keys: dict[str, RsaKeyPair], tmp_path: Any) -> None:
    pair = keys["app"]
    path = tmp_path / "app.pem"
    path.write_text(pair.private_pem)
    for text in (pair.private_pem, pair.private_base64, str(path)):
        assert load_rsa_private_key(text).public_key().public_numbers() == (
            pair.public_key.public_numbers()
        )
    assert load_rsa_public_key(pair.public_base64).public_numbers() == (
        pair.public_key.public_numbers()
    )


def test_base64_that_looks_like_a_long_path_is_not_read_as_one() -> None:
    with pytest.raises(ValueError, match="not a readable"):
        load_rsa_public_key("A" * 300 + "/" + "B" * 300)


def test_unreadable_key_error_does_not_echo_it() -> None:
    with pytest.raises(ValueError, match="not a readable") as caught:
        load_rsa_private_key("c2VjcmV0LWJ1dC1ub3QtYS1rZXk=")
    assert "c2Vj" not in str(caught.value)
    assert caught.value.__cause__ is None


# --- sandbox -------------------------------------------------------------------------------


async def test_sandbox_pays_through_verify_notify() -> None:
    sandbox = SandboxProvider(public_base_url="http://shop.test/")
    pay = await sandbox.create(ORDER)
    assert pay.pay_url == "http://shop.test/v1/payments/sandbox/K0001/pay"
    assert await sandbox.query("K0001") is None

    callback = sandbox.sign_payment("K0001", 1990, "CNY", "SB-1")
    notice = sandbox.verify_notify(**vars(callback))
    assert notice == PaymentNotice("sandbox", "K0001", "SB-1", 1990, "CNY", paid=True)
    assert await sandbox.query("K0001") == notice
    refund = await sandbox.refund(
        order_no="K0001", trade_no="SB-1", amount=990, total=1990, refund_no="R1", reason="x"
    )
    assert refund.succeeded
    assert refund.refund_no == "R1"


def test_sandbox_refuses_tampered_foreign_and_stale_callbacks() -> None:
    now = [1_800_000_000.0]
    sandbox = SandboxProvider(public_base_url="http://x", secret=b"k" * 32, clock=lambda: now[0])
    callback = sandbox.sign_payment("K0001", 1990, "CNY", "SB-1")

    tampered = dataclasses.replace(callback, body=callback.body.replace(b"1990", b"1"))
    with pytest.raises(PaymentRejected, match="bad_signature"):
        sandbox.verify_notify(**vars(tampered))

    other = SandboxProvider(public_base_url="http://x", secret=b"j" * 32, clock=lambda: now[0])
    with pytest.raises(PaymentRejected, match="bad_signature"):
        other.verify_notify(**vars(callback))

    with pytest.raises(PaymentRejected, match="bad_signature"):
        sandbox.verify_notify(**no_http(callback.body))

    now[0] += 301
    with pytest.raises(PaymentRejected, match="stale"):
        sandbox.verify_notify(**vars(callback))


def test_sandbox_refuses_a_signed_nonsense_amount() -> None:
    sandbox = SandboxProvider(public_base_url="http://x")
    for amount in (0, -5, MAX_AMOUNT + 1):
        with pytest.raises(PaymentRejected, match="bad_amount"):
            sandbox.verify_notify(**vars(sandbox.sign_payment("K1", amount, "CNY", "T")))


# --- 易支付 ------------------------------------------------------------------------------------


def epay(**overrides: Any) -> EpayProvider:
    options: dict[str, Any] = {
        "gateway_url": "https://pay.example/",
        "pid": "1001",
        "key": EPAY_KEY,
        "notify_url": "http://shop.test/v1/payments/epay/notify",
        "return_url": "http://shop.test/orders/{order_no}",
        **overrides,
    }
    return EpayProvider(**options)


def epay_verify(provider: EpayProvider, query: dict[str, str]) -> PaymentNotice:
    return provider.verify_notify(method="GET", headers={}, query=query, body=b"")


def test_epay_callback_verifies() -> None:
    query = epay_notify_query(EPAY_KEY, out_trade_no="K0001", money="19.90", trade_no="E1")
    assert epay_verify(epay(), query) == PaymentNotice("epay", "K0001", "E1", 1990, "CNY", True)
    # Upper-case hex from some gateways, and a POSTed form from some forks.
    assert epay_verify(epay(), {**query, "sign": query["sign"].upper()}).paid
    assert epay().verify_notify(method="POST", headers={}, query={}, body=form_body(query)).paid


def test_epay_unpaid_status_is_not_paid() -> None:
    query = epay_notify_query(EPAY_KEY, trade_status="WAIT_BUYER_PAY")
    assert not epay_verify(epay(), query).paid


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda q: {**q, "sign": "0" * 32}, "bad_signature"),
        (lambda q: {**q, "money": "0.01"}, "bad_signature"),
        (lambda q: {**q, "out_trade_no": "K9999"}, "bad_signature"),
        (lambda q: {**q, "sign_type": "SHA256"}, "unsupported_signature"),
        (lambda q: {k: v for k, v in q.items() if k != "sign"}, "malformed"),
        (lambda q: {k: v for k, v in q.items() if k != "money"}, "malformed"),
        (lambda q: epay_notify_query("another-merchant-key", money=q["money"]), "bad_signature"),
        (lambda q: epay_notify_query(EPAY_KEY, pid="1002"), "wrong_merchant"),
        (lambda q: epay_notify_query(EPAY_KEY, money="12.345"), "bad_amount"),
        (lambda q: epay_notify_query(EPAY_KEY, money="-1.00"), "bad_amount"),
        (lambda q: epay_notify_query(EPAY_KEY, money="1e9"), "bad_amount"),
    ],
)
def test_epay_rejects(mutate: Any, code: str) -> None:
    with pytest.raises(PaymentRejected) as caught:
        epay_verify(epay(), mutate(epay_notify_query(EPAY_KEY)))
    assert caught.value.code == code
    assert EPAY_KEY not in str(caught.value)


def test_epay_repeated_form_field_is_refused() -> None:
    body = form_body(epay_notify_query(EPAY_KEY)) + b"&money=0.01"
    with pytest.raises(PaymentRejected, match="malformed"):
        epay().verify_notify(method="POST", headers={}, query={}, body=body)


async def test_epay_submit_url_is_signed_as_v1_expects() -> None:
    pay = await epay(pay_type="alipay").create(ORDER)
    assert pay.pay_url is not None
    parts = urlsplit(pay.pay_url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://pay.example/submit.php"
    params = dict(parse_qsl(parts.query))
    assert params["sign"] == epay_signature(params, EPAY_KEY)
    assert params["sign_type"] == "MD5"
    assert (params["money"], params["out_trade_no"], params["type"]) == ("19.90", "K0001", "alipay")
    assert params["return_url"] == "http://shop.test/orders/K0001"
    assert EPAY_KEY not in pay.pay_url


def test_epay_mapi_needs_a_type() -> None:
    with pytest.raises(ValueError, match="pay type"):
        epay(method="mapi")


def test_epay_replies_as_v1_gateways_expect() -> None:
    assert epay().reply_ok().body == b"success"
    assert epay().reply_error().body == b"fail"


# --- Alipay ------------------------------------------------------------------------------------


def alipay(keys: dict[str, RsaKeyPair], **overrides: Any) -> AlipayProvider:
    options: dict[str, Any] = {
        "app_id": APP_ID,
        "private_key": keys["app"].private_base64,
        "alipay_public_key": keys["alipay"].public_pem,
        "notify_url": "http://shop.test/v1/payments/alipay/notify",
        "seller_id": SELLER_ID,
        "gateway": "https://openapi.example/gateway.do",
        **overrides,
    }
    return AlipayProvider(**options)


def alipay_verify(provider: AlipayProvider, form: dict[str, str]) -> PaymentNotice:
    return provider.verify_notify(
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        query={},
        body=form_body(form),
    )


def test_alipay_callback_verifies(keys: dict[str, RsaKeyPair]) -> None:
    form = alipay_notify_form(keys["alipay"].private_pem, trade_no="A1", total_amount="19.90")
    expected = PaymentNotice("alipay", "K0001", "A1", 1990, "CNY", paid=True)
    assert alipay_verify(alipay(keys), form) == expected
    finished = alipay_notify_form(keys["alipay"].private_pem, trade_status="TRADE_FINISHED")
    assert alipay_verify(alipay(keys), finished).paid
    waiting = alipay_notify_form(keys["alipay"].private_pem, trade_status="WAIT_BUYER_PAY")
    assert not alipay_verify(alipay(keys), waiting).paid
    # Without a configured seller, any seller of this app is accepted.
    other_seller = alipay_notify_form(keys["alipay"].private_pem, seller_id="2088999")
    assert alipay_verify(alipay(keys, seller_id=None), other_seller).paid


def test_alipay_helper_agrees_with_the_sdk(keys: dict[str, RsaKeyPair]) -> None:
    form = alipay_notify_form(keys["alipay"].private_pem, subject="VIP 月卡")
    sdk = AliPay(
        appid=APP_ID,
        app_private_key_string=keys["app"].private_pem,
        alipay_public_key_string=keys["alipay"].public_pem,
    )
    data = dict(form)
    signature = data.pop("sign")
    assert sdk.verify(data, signature)
    assert alipay_verify(alipay(keys), form).paid


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda f, k: {**f, "total_amount": "0.01"}, "bad_signature"),
        (
            lambda f, k: {**f, "trade_status": "TRADE_SUCCESS", "out_trade_no": "K2"},
            "bad_signature",
        ),
        (lambda f, k: {**f, "sign": f["sign"][:-8] + "AAAAAAA="}, "bad_signature"),
        (lambda f, k: {**f, "sign": "%%%"}, "malformed"),
        (lambda f, k: {**f, "sign_type": "RSA"}, "unsupported_signature"),
        (lambda f, k: alipay_notify_form(k["evil"].private_pem), "bad_signature"),
        (lambda f, k: alipay_notify_form(k["app"].private_pem), "bad_signature"),
        (
            lambda f, k: alipay_notify_form(k["alipay"].private_pem, app_id="2021999"),
            "wrong_merchant",
        ),
        (
            lambda f, k: alipay_notify_form(k["alipay"].private_pem, seller_id="2088999"),
            "wrong_merchant",
        ),
        (
            lambda f, k: alipay_notify_form(k["alipay"].private_pem, total_amount="19.999"),
            "bad_amount",
        ),
        (lambda f, k: {x: y for x, y in f.items() if x != "total_amount"}, "malformed"),
    ],
)
def test_alipay_rejects(keys: dict[str, RsaKeyPair], mutate: Any, code: str) -> None:
    form = alipay_notify_form(keys["alipay"].private_pem)
    with pytest.raises(PaymentRejected) as caught:
        alipay_verify(alipay(keys), mutate(form, keys))
    assert caught.value.code == code


async def test_alipay_page_pay_url_is_signed_with_the_app_key(keys: dict[str, RsaKeyPair]) -> None:
    pay = await alipay(keys, return_url="http://shop.test/orders/{order_no}").create(ORDER)
    assert pay.pay_url is not None
    assert pay.pay_url.startswith("https://openapi.example/gateway.do?")
    params = dict(parse_qsl(urlsplit(pay.pay_url).query))
    content = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign")
    assert rsa2_verify(keys["app"].public_key, content, params["sign"])
    assert params["method"] == "alipay.trade.page.pay"
    assert params["return_url"] == "http://shop.test/orders/K0001"
    biz = json.loads(params["biz_content"])
    assert biz["total_amount"] == "19.90"
    assert biz["time_expire"] == "2026-11-22 15:30:00"  # Beijing time
    assert biz["product_code"] == "FAST_INSTANT_TRADE_PAY"


# --- WeChat Pay -----------------------------------------------------------------------------


def wechat(keys: dict[str, RsaKeyPair], clock: Any = time.time) -> WechatPayProvider:
    return WechatPayProvider(
        mchid=MCHID,
        appid=WX_APPID,
        private_key=keys["merchant"].private_pem,
        cert_serial="5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        apiv3_key=APIV3_KEY,
        platform_public_key=keys["platform"].public_pem,
        platform_public_key_id=PUB_KEY_ID,
        notify_url="http://shop.test/v1/payments/wechatpay/notify",
        gateway="https://wechat.example",
        clock=clock,
    )


def paid_callback(keys: dict[str, RsaKeyPair], **fields: Any) -> tuple[dict[str, str], bytes]:
    resource = wechat_transaction(**{"mchid": MCHID, "appid": WX_APPID, **fields})
    return wechat_notify(keys["platform"].private_key, PUB_KEY_ID, APIV3_KEY, resource)


def test_wechat_callback_verifies(keys: dict[str, RsaKeyPair]) -> None:
    headers, body = paid_callback(keys, transaction_id="4200001", out_trade_no="K0001")
    notice = wechat(keys).verify_notify(**no_http(body, headers))
    assert notice == PaymentNotice("wechatpay", "K0001", "4200001", 1990, "CNY", paid=True)
    lower = {k.lower(): v for k, v in headers.items()}
    assert wechat(keys).verify_notify(**no_http(body, lower)).paid


def test_wechat_helper_agrees_with_wechatpayv3(keys: dict[str, RsaKeyPair]) -> None:
    headers, body = paid_callback(keys)
    library = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=MCHID,
        private_key=keys["merchant"].private_pem,
        cert_serial_no="5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        appid=WX_APPID,
        apiv3_key=APIV3_KEY,
        public_key=keys["platform"].public_pem,
        public_key_id=PUB_KEY_ID,
    )
    result = library.callback(headers, body)
    assert result["resource"]["amount"]["total"] == 1990
    assert wechat(keys).verify_notify(**no_http(body, headers)).amount == 1990


def test_wechat_rejects_stale_and_future_timestamps(keys: dict[str, RsaKeyPair]) -> None:
    now = 1_800_000_000
    resource = wechat_transaction(mchid=MCHID, appid=WX_APPID)
    for skew, ok in ((-301, False), (-299, True), (299, True), (301, False)):
        headers, body = wechat_notify(
            keys["platform"].private_key, PUB_KEY_ID, APIV3_KEY, resource, timestamp=now + skew
        )
        provider = wechat(keys, clock=lambda: float(now))
        if ok:
            assert provider.verify_notify(**no_http(body, headers)).paid
        else:
            with pytest.raises(PaymentRejected, match="stale"):
                provider.verify_notify(**no_http(body, headers))


def _resign(keys: dict[str, RsaKeyPair], body: bytes) -> tuple[dict[str, str], bytes]:
    from tests.support.payments import wechat_headers

    return wechat_headers(keys["platform"].private_key, PUB_KEY_ID, body), body


@pytest.mark.parametrize(
    ("forge", "code"),
    [
        # Another key signing under our serial: a forgery.
        (
            lambda k: wechat_notify(
                k["evil"].private_key,
                PUB_KEY_ID,
                APIV3_KEY,
                wechat_transaction(mchid=MCHID, appid=WX_APPID),
            ),
            "bad_signature",
        ),
        (
            lambda k: wechat_notify(
                k["platform"].private_key, "PUB_KEY_ID_other", APIV3_KEY, wechat_transaction()
            ),
            "unknown_key",
        ),
        # Correctly signed, sealed with another APIv3 key.
        (
            lambda k: wechat_notify(
                k["platform"].private_key,
                PUB_KEY_ID,
                "ffffffffffffffffffffffffffffffff",
                wechat_transaction(mchid=MCHID, appid=WX_APPID),
            ),
            "decryption_failed",
        ),
        (lambda k: paid_callback(k, mchid="1900000999"), "wrong_merchant"),
        (lambda k: paid_callback(k, appid="wx9999"), "wrong_merchant"),
        (lambda k: paid_callback(k, amount={"total": 19.9, "currency": "CNY"}), "bad_amount"),
        (lambda k: paid_callback(k, amount={"total": True, "currency": "CNY"}), "bad_amount"),
        (lambda k: paid_callback(k, amount={"total": -1, "currency": "CNY"}), "bad_amount"),
        (lambda k: paid_callback(k, amount={"total": "1990", "currency": "CNY"}), "bad_amount"),
        (lambda k: paid_callback(k, transaction_id=""), "malformed"),
        (
            lambda k: _resign(k, b'{"resource":{"algorithm":"AEAD_SM4_GCM"}}'),
            "unsupported_signature",
        ),
        (lambda k: _resign(k, b"not json"), "malformed"),
    ],
)
def test_wechat_rejects(keys: dict[str, RsaKeyPair], forge: Any, code: str) -> None:
    headers, body = forge(keys)
    with pytest.raises(PaymentRejected) as caught:
        wechat(keys).verify_notify(**no_http(body, headers))
    assert caught.value.code == code
    assert APIV3_KEY not in str(caught.value)


def test_wechat_rejects_tampered_bodies_and_headers(keys: dict[str, RsaKeyPair]) -> None:
    headers, body = paid_callback(keys)
    envelope = json.loads(body)
    envelope["event_type"] = "TRANSACTION.SUCCESS "
    tampered = json.dumps(envelope).encode()
    cases = [
        (headers, tampered, "bad_signature"),
        ({**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/abc"}, body, "malformed"),
        ({**headers, "Wechatpay-Nonce": "other"}, body, "bad_signature"),
        ({**headers, "Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"}, body, None),
        ({k: v for k, v in headers.items() if k != "Wechatpay-Timestamp"}, body, "malformed"),
    ]
    for case_headers, case_body, code in cases:
        with pytest.raises(PaymentRejected) as caught:
            wechat(keys).verify_notify(**no_http(case_body, case_headers))
        assert code is None or caught.value.code == code


def test_wechat_replies(keys: dict[str, RsaKeyPair]) -> None:
    assert wechat(keys).reply_ok().status_code == 204
    error = wechat(keys).reply_error()
    assert error.status_code >= 400
    assert json.loads(error.body)["code"] == "FAIL"


def test_wechat_refuses_a_short_apiv3_key(keys: dict[str, RsaKeyPair]) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        WechatPayProvider(
            mchid=MCHID,
            appid=WX_APPID,
            private_key=keys["merchant"].private_pem,
            cert_serial="01",
            apiv3_key="short",
            platform_public_key=keys["platform"].public_pem,
            platform_public_key_id=PUB_KEY_ID,
            notify_url="http://x",
        )


# --- registry --------------------------------------------------------------------------------


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_registry_enables_only_configured_providers(keys: dict[str, RsaKeyPair]) -> None:
    assert set(build_providers(settings())) == {"sandbox"}
    assert build_providers(settings(sandbox=False)) == {}
    cert_pem, serial = self_signed_certificate(keys["merchant"].private_key, "1900000001")
    assert cert_pem.startswith("-----BEGIN CERTIFICATE-----")
    everything = settings(
        sandbox=False,
        public_url="https://shop.example",
        epay_url="https://pay.example",
        epay_pid="1001",
        epay_key=EPAY_KEY,
        alipay_app_id=APP_ID,
        alipay_private_key=keys["app"].private_pem,
        alipay_public_key=keys["alipay"].public_base64,
        wechatpay_mchid=MCHID,
        wechatpay_appid=WX_APPID,
        wechatpay_private_key=keys["merchant"].private_pem,
        wechatpay_cert_serial=serial,
        wechatpay_apiv3_key=APIV3_KEY,
        wechatpay_public_key=keys["platform"].public_pem,
        wechatpay_public_key_id=PUB_KEY_ID,
    )
    providers = build_providers(everything)
    assert set(providers) == {"epay", "alipay", "wechatpay"}
    assert all(p.name == name for name, p in providers.items())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epay_url": "https://pay.example"}, "KAMI_EPAY_\\* is partly set"),
        ({"alipay_app_id": APP_ID}, "KAMI_ALIPAY_\\* is partly set"),
        ({"wechatpay_mchid": MCHID}, "KAMI_WECHATPAY_\\* is partly set"),
        ({"wechatpay_apiv3_key": "short"}, "32 bytes"),
        (
            {
                "epay_url": "https://p.example",
                "epay_pid": "1",
                "epay_key": "k",
                "epay_method": "mapi",
            },
            "KAMI_EPAY_TYPE",
        ),
        (
            {"environment": "production", "sandbox": False, "sandbox_secret": "changeme"},
            "placeholder",
        ),
    ],
)
def test_settings_refuse_half_configured_providers(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(**values)


def test_sandbox_secret_setting_is_used() -> None:
    one = build_providers(settings(sandbox_secret="s" * 32))["sandbox"]
    two = build_providers(settings(sandbox_secret="s" * 32))["sandbox"]
    assert isinstance(one, SandboxProvider)
    callback = one.sign_payment("K1", 100, "CNY", "T1")
    assert two.verify_notify(**vars(callback)).paid
    # Without a secret each process draws its own: nobody else can sign.
    three = build_providers(settings())["sandbox"]
    with pytest.raises(PaymentRejected):
        three.verify_notify(**vars(callback))
