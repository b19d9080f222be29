"""create, query and refund over real HTTP against loopback gateways.

Each fake gateway (tests.support.payments) checks our request signatures as the real one
does and signs its answers, so these tests cover both directions of the protocol.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.payments import PaymentNotice, PaymentOrder, PaymentProviderError
from engine.payments.alipay import AlipayProvider
from engine.payments.epay import EpayProvider
from engine.payments.wechatpay import WechatPayProvider
from tests.support.payments import (
    AlipayGateway,
    EpayGateway,
    GatewayResponse,
    GatewayServer,
    RsaKeyPair,
    Trade,
    WechatGateway,
    generate_rsa,
    self_signed_certificate,
    serving,
)

ORDER = PaymentOrder(
    order_no="K0001",
    amount=1990,
    currency="CNY",
    subject="VIP 月卡",
    expires_at=datetime(2026, 11, 22, 7, 30, tzinfo=UTC),
    client_ip="203.0.113.9",
)
EPAY_KEY = "epay-merchant-key-0123456789"
APIV3_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def keys() -> dict[str, RsaKeyPair]:
    return {role: generate_rsa() for role in ("app", "alipay", "merchant", "platform", "evil")}


def closed_port_url() -> str:
    """A URL nothing listens on: bind a port, then release it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- 易支付 ------------------------------------------------------------------------------------


@pytest.fixture
def epay_gateway() -> Iterator[tuple[EpayGateway, str]]:
    gateway = EpayGateway(pid="1001", key=EPAY_KEY)
    with serving(gateway) as url:
        yield gateway, url


def epay(url: str, **overrides: Any) -> EpayProvider:
    options: dict[str, Any] = {
        "gateway_url": url,
        "pid": "1001",
        "key": EPAY_KEY,
        "notify_url": "http://shop.test/v1/payments/epay/notify",
        "return_url": "http://shop.test/",
        "pay_type": "alipay",
        "method": "mapi",
        "timeout_s": 5.0,
        **overrides,
    }
    return EpayProvider(**options)


async def test_epay_create_query_refund(epay_gateway: tuple[EpayGateway, str]) -> None:
    gateway, url = epay_gateway
    provider = epay(url)
    assert await provider.query("K0001") is None

    pay = await provider.create(ORDER)
    trade = gateway.trades["K0001"]
    assert trade.amount == 1990
    assert pay.pay_url == f"https://pay.example/pay/{trade.trade_no}"
    assert pay.qr_code == f"https://qr.example/{trade.trade_no}"
    sent = gateway.server.requests[-1] if gateway.server else None
    assert sent is not None
    assert sent.form()["clientip"] == "203.0.113.9"

    unpaid = await provider.query("K0001")
    assert unpaid is not None
    assert not unpaid.paid
    trade.paid = True
    assert await provider.query("K0001") == PaymentNotice(
        "epay", "K0001", trade.trade_no, 1990, "CNY", paid=True
    )

    refund = await provider.refund(
        order_no="K0001",
        trade_no=trade.trade_no,
        amount=990,
        total=1990,
        refund_no="R1",
        reason="x",
    )
    assert refund.succeeded
    assert trade.refunded == 990
    too_much = await provider.refund(
        order_no="K0001",
        trade_no=trade.trade_no,
        amount=1990,
        total=1990,
        refund_no="R2",
        reason="x",
    )
    assert not too_much.succeeded


async def test_epay_wrong_key_and_outages_are_provider_errors(
    epay_gateway: tuple[EpayGateway, str],
) -> None:
    gateway, url = epay_gateway
    with pytest.raises(PaymentProviderError, match="mapi refused") as caught:
        await epay(url, key="wrong-key").create(ORDER)
    assert "wrong-key" not in str(caught.value)
    with pytest.raises(PaymentProviderError, match="order query refused") as caught:
        await epay(url, key="wrong-key").query("K0001")
    assert "wrong-key" not in str(caught.value)

    assert gateway.server is not None
    gateway.server.fail_status = 502
    with pytest.raises(PaymentProviderError, match="HTTP 502"):
        await epay(url).query("K0001")
    with pytest.raises(PaymentProviderError, match="unreachable") as caught:
        await epay(closed_port_url()).query("K0001")
    assert EPAY_KEY not in str(caught.value)


# --- Alipay ------------------------------------------------------------------------------------


@pytest.fixture
def alipay_gateway(keys: dict[str, RsaKeyPair]) -> Iterator[tuple[AlipayGateway, str]]:
    gateway = AlipayGateway("2021000000000001", keys["app"].public_key, keys["alipay"])
    with serving(gateway) as url:
        yield gateway, f"{url}/gateway.do"


def alipay(keys: dict[str, RsaKeyPair], gateway: str, **overrides: Any) -> AlipayProvider:
    options: dict[str, Any] = {
        "app_id": "2021000000000001",
        "private_key": keys["app"].private_pem,
        "alipay_public_key": keys["alipay"].public_pem,
        "notify_url": "http://shop.test/v1/payments/alipay/notify",
        "gateway": gateway,
        "method": "qr",
        "timeout_s": 5.0,
        **overrides,
    }
    return AlipayProvider(**options)


async def test_alipay_precreate_query_refund(
    keys: dict[str, RsaKeyPair], alipay_gateway: tuple[AlipayGateway, str]
) -> None:
    gateway, url = alipay_gateway
    provider = alipay(keys, url)
    assert await provider.query("K0001") is None

    pay = await provider.create(ORDER)
    trade = gateway.trades["K0001"]
    assert pay.qr_code == f"https://qr.alipay.com/{trade.trade_no}"
    assert pay.pay_url is None
    assert gateway.server is not None
    assert gateway.server.requests[-1].query["notify_url"] == (
        "http://shop.test/v1/payments/alipay/notify"
    )

    waiting = await provider.query("K0001")
    assert waiting is not None
    assert not waiting.paid
    trade.paid = True
    assert await provider.query("K0001") == PaymentNotice(
        "alipay", "K0001", trade.trade_no, 1990, "CNY", paid=True
    )

    refund = await provider.refund(
        order_no="K0001",
        trade_no=trade.trade_no,
        amount=1990,
        total=1990,
        refund_no="R1",
        reason="售后",
    )
    assert refund.succeeded
    assert trade.refunded == 1990
    again = await provider.refund(
        order_no="K0001", trade_no=trade.trade_no, amount=1, total=1990, refund_no="R2", reason="x"
    )
    assert not again.succeeded


async def test_alipay_answers_signed_by_another_key_are_refused(
    keys: dict[str, RsaKeyPair], alipay_gateway: tuple[AlipayGateway, str]
) -> None:
    gateway, url = alipay_gateway
    gateway.alipay_key = keys["evil"]
    with pytest.raises(PaymentProviderError, match="signature invalid"):
        await alipay(keys, url).query("K0001")


async def test_alipay_refusals_and_outages_are_provider_errors(
    keys: dict[str, RsaKeyPair], alipay_gateway: tuple[AlipayGateway, str]
) -> None:
    gateway, url = alipay_gateway
    # Signed by a key the gateway does not know for this app: the gateway refuses.
    with pytest.raises(PaymentProviderError, match=r"precreate refused: isv\.invalid-signature"):
        await alipay(keys, url, private_key=keys["evil"].private_pem).create(ORDER)
    assert gateway.server is not None
    gateway.server.fail_status = 500
    with pytest.raises(PaymentProviderError, match=r"alipay\.trade\.query"):
        await alipay(keys, url).query("K0001")
    with pytest.raises(PaymentProviderError, match=r"alipay\.trade\.query"):
        await alipay(keys, f"{closed_port_url()}/gateway.do").query("K0001")


# --- WeChat Pay -----------------------------------------------------------------------------


@pytest.fixture
def wechat_gateway(keys: dict[str, RsaKeyPair]) -> Iterator[tuple[WechatGateway, str, str]]:
    _, serial = self_signed_certificate(keys["merchant"].private_key, "1900000001")
    gateway = WechatGateway(
        mchid="1900000001",
        appid="wx0000000000000001",
        merchant_public_key=keys["merchant"].public_key,
        merchant_serial=serial,
        platform_key=keys["platform"],
        platform_key_id="PUB_KEY_ID_0000000000000001",
    )
    with serving(gateway) as url:
        yield gateway, url, serial


def wechat(keys: dict[str, RsaKeyPair], url: str, serial: str) -> WechatPayProvider:
    return WechatPayProvider(
        mchid="1900000001",
        appid="wx0000000000000001",
        private_key=keys["merchant"].private_base64,
        cert_serial=serial,
        apiv3_key=APIV3_KEY,
        platform_public_key=keys["platform"].public_base64,
        platform_public_key_id="PUB_KEY_ID_0000000000000001",
        notify_url="http://shop.test/v1/payments/wechatpay/notify",
        gateway=url,
        timeout_s=5.0,
    )


async def test_wechat_native_query_refund(
    keys: dict[str, RsaKeyPair], wechat_gateway: tuple[WechatGateway, str, str]
) -> None:
    gateway, url, serial = wechat_gateway
    provider = wechat(keys, url, serial)
    assert await provider.query("K0001") is None

    pay = await provider.create(ORDER)
    trade = gateway.trades["K0001"]
    assert pay.qr_code == f"weixin://wxpay/bizpayurl?pr={trade.trade_no}"
    assert gateway.server is not None
    sent = gateway.server.requests[-1].json()
    assert sent["amount"] == {"total": 1990, "currency": "CNY"}
    assert sent["time_expire"] == "2026-11-22T15:30:00+08:00"
    assert sent["scene_info"] == {"payer_client_ip": "203.0.113.9"}

    unpaid = await provider.query("K0001")
    assert unpaid is not None
    assert not unpaid.paid
    trade.paid = True
    assert await provider.query("K0001") == PaymentNotice(
        "wechatpay", "K0001", trade.trade_no, 1990, "CNY", paid=True
    )

    refund = await provider.refund(
        order_no="K0001",
        trade_no=trade.trade_no,
        amount=500,
        total=1990,
        refund_no="R1",
        reason="x",
    )
    assert refund.succeeded
    assert trade.refunded == 500
    refused = await provider.refund(
        order_no="K0001",
        trade_no=trade.trade_no,
        amount=1990,
        total=1990,
        refund_no="R2",
        reason="x",
    )
    assert not refused.succeeded


async def test_wechat_answers_from_a_man_in_the_middle_are_refused(
    keys: dict[str, RsaKeyPair], wechat_gateway: tuple[WechatGateway, str, str]
) -> None:
    gateway, url, serial = wechat_gateway
    gateway.trades["K0001"] = Trade("K0001", 1990, paid=True)
    gateway.answer_key = keys["evil"].private_key
    with pytest.raises(PaymentProviderError, match="signature mismatch"):
        await wechat(keys, url, serial).query("K0001")


async def test_wechat_bad_merchant_signature_and_outages_are_provider_errors(
    keys: dict[str, RsaKeyPair], wechat_gateway: tuple[WechatGateway, str, str]
) -> None:
    gateway, url, serial = wechat_gateway
    with pytest.raises(PaymentProviderError, match="HTTP 401 SIGN_ERROR"):
        await wechat(keys, url, "0BADSERIAL").create(ORDER)
    assert gateway.server is not None
    gateway.server.fail_status = 503
    with pytest.raises(PaymentProviderError, match="HTTP 503"):
        await wechat(keys, url, serial).query("K0001")
    with pytest.raises(PaymentProviderError, match="unreachable"):
        await wechat(keys, closed_port_url(), serial).query("K0001")


def test_gateway_server_records_requests() -> None:
    import httpx

    with GatewayServer(lambda request: GatewayResponse.json({"echo": request.query})) as server:
        answer = httpx.get(f"{server.url}/x", params={"a": "1"})
        assert answer.json() == {"echo": {"a": "1"}}
        assert server.requests[0].target == "/x?a=1"


@pytest.mark.parametrize("body", [b'{"foo":1}', b"<html>busy</html>", b'{"error_response":{}}'])
async def test_alipay_unusable_answers_are_provider_errors(
    keys: dict[str, RsaKeyPair], body: bytes
) -> None:
    server = GatewayServer(lambda request: GatewayResponse(200, body)).start()
    try:
        with pytest.raises(PaymentProviderError, match=r"alipay\.trade\.query"):
            await alipay(keys, f"{server.url}/gateway.do").query("K0001")
    finally:
        server.stop()
