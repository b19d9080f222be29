"""Orders paid through 易支付, Alipay and WeChat Pay, over real HTTP both ways.

Kami runs behind a real uvicorn server on loopback; each provider's gateway is a real
loopback server (tests.support.payments) that checks Kami's request signatures. Callbacks
are signed as the provider signs them, with keys made here: a valid one delivers exactly
once even when sent 10 times at once; forged, wrong-amount, wrong-merchant and stale ones
are refused as the provider expects and change nothing.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from engine.settings import Settings
from tests.integration.api.conftest import unique_sku
from tests.support.payments import (
    AlipayGateway,
    EpayGateway,
    RsaKeyPair,
    WechatGateway,
    alipay_notify_form,
    epay_notify_query,
    form_body,
    generate_rsa,
    self_signed_certificate,
    serving,
    wechat_notify,
    wechat_transaction,
)

PRICE = 1990
EPAY_KEY = "epay-merchant-key-0123456789"
APIV3_KEY = "0123456789abcdef0123456789abcdef"
APP_ID, SELLER_ID = "2021000000000001", "2088000000000001"
MCHID, APPID = "1900000001", "wx0000000000000001"


@dataclass
class Providers:
    keys: dict[str, RsaKeyPair]
    settings: dict[str, Any]


@pytest.fixture(scope="module")
def providers() -> Iterator[Providers]:
    keys = {role: generate_rsa() for role in ("app", "alipay", "merchant", "platform", "evil")}
    _, serial = self_signed_certificate(keys["merchant"].private_key, MCHID)
    with ExitStack() as stack:
        epay_url = stack.enter_context(serving(EpayGateway(pid="1001", key=EPAY_KEY)))
        alipay_url = stack.enter_context(
            serving(AlipayGateway(APP_ID, keys["app"].public_key, keys["alipay"]))
        )
        wechat_url = stack.enter_context(
            serving(
                WechatGateway(
                    mchid=MCHID,
                    appid=APPID,
                    merchant_public_key=keys["merchant"].public_key,
                    merchant_serial=serial,
                    platform_key=keys["platform"],
                    platform_key_id="PUB_KEY_ID_0000000000000001",
                )
            )
        )
        yield Providers(
            keys,
            {
                "epay_url": epay_url,
                "epay_pid": "1001",
                "epay_key": EPAY_KEY,
                "epay_type": "alipay",
                "epay_method": "mapi",
                "alipay_app_id": APP_ID,
                "alipay_private_key": keys["app"].private_pem,
                "alipay_public_key": keys["alipay"].public_pem,
                "alipay_seller_id": SELLER_ID,
                "alipay_gateway": f"{alipay_url}/gateway.do",
                "alipay_method": "qr",
                "wechatpay_mchid": MCHID,
                "wechatpay_appid": APPID,
                "wechatpay_private_key": keys["merchant"].private_base64,
                "wechatpay_cert_serial": serial,
                "wechatpay_apiv3_key": APIV3_KEY,
                "wechatpay_public_key": keys["platform"].public_base64,
                "wechatpay_public_key_id": "PUB_KEY_ID_0000000000000001",
                "wechatpay_gateway": wechat_url,
            },
        )


@pytest.fixture
async def kami(settings: Settings, providers: Providers) -> AsyncIterator[tuple[FastAPI, str]]:
    """The app behind a real HTTP server on a free loopback port."""
    configured = Settings(
        **{
            **settings.model_dump(),
            **providers.settings,
            "order_max_unpaid_per_ip": 1000,
            "order_max_unpaid_units_per_ip": 10000,
        }
    )
    app = create_app(configured)
    async with app.router.lifespan_context(app):
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
        )
        task = asyncio.create_task(server.serve())
        for _ in range(500):  # the server flags `started` itself; no event to wait on
            if server.started:
                break
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield app, f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task


async def _order(http: httpx.AsyncClient, admin: str, method: str) -> dict[str, Any]:
    sku = unique_sku("P")
    auth = {"Authorization": f"Bearer {admin}"}
    created = await http.post(
        "/v1/products",
        headers=auth,
        json={"sku": sku, "name": "VIP month", "type": "card", "price": PRICE},
    )
    assert created.status_code == 201, created.text
    codes = [f"{sku}-{n}-{secrets.token_hex(4)}" for n in range(3)]
    assert (
        await http.post(f"/v1/products/{sku}/batches", headers=auth, json={"codes": codes})
    ).status_code == 201
    order = await http.post(
        "/v1/orders",
        json={
            "sku": sku,
            "quantity": 1,
            "contact": {"email": f"b{secrets.token_hex(3)}@example.com"},
            "payment_method": method,
        },
    )
    assert order.status_code == 201, order.text
    body: dict[str, Any] = order.json()
    assert body["pay_url"] or body["qr_code"]
    body["sku"], body["codes"] = sku, codes
    return body


Callback = Callable[..., tuple[str, dict[str, str], bytes, dict[str, str]]]


def _callbacks(providers: Providers) -> dict[str, Callback]:
    """Per provider: (order_no, amount in yuan/fen, **overrides) -> (method, query, body,
    headers) of a signed callback."""
    keys = providers.keys

    def epay(order_no: str, money: str = "19.90", *, key: str = EPAY_KEY, **f: str) -> Any:
        return "GET", epay_notify_query(key, out_trade_no=order_no, money=money, **f), b"", {}

    def alipay(order_no: str, money: str = "19.90", *, signer: str = "alipay", **f: str) -> Any:
        form = alipay_notify_form(
            keys[signer].private_pem, out_trade_no=order_no, total_amount=money, **f
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return "POST", {}, form_body(form), headers

    def wechat(
        order_no: str,
        money: str = "19.90",
        *,
        signer: str = "platform",
        timestamp: int | None = None,
        **f: Any,
    ) -> Any:
        fen = int(money.replace(".", ""))
        resource = wechat_transaction(
            out_trade_no=order_no,
            amount={"total": fen, "payer_total": fen, "currency": "CNY", "payer_currency": "CNY"},
            **f,
        )
        headers, body = wechat_notify(
            keys[signer].private_key,
            "PUB_KEY_ID_0000000000000001",
            APIV3_KEY,
            resource,
            timestamp=timestamp,
        )
        return "POST", {}, body, headers

    return {"epay": epay, "alipay": alipay, "wechatpay": wechat}


async def _send(
    http: httpx.AsyncClient,
    provider: str,
    request: tuple[str, dict[str, str], bytes, dict[str, str]],
) -> httpx.Response:
    method, query, body, headers = request
    return await http.request(
        method, f"/v1/payments/{provider}/notify", params=query, content=body, headers=headers
    )


async def _state(database_url: str, order_no: str) -> tuple[str, int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT o.status, (SELECT count(*) FROM payments p WHERE p.order_id = o.id) AS paid, "
            "(SELECT count(*) FROM order_keys k WHERE k.order_id = o.id) AS keys "
            "FROM orders o WHERE o.order_no = $1",
            order_no,
        )
    finally:
        await conn.close()
    assert row is not None
    return row["status"], row["paid"], row["keys"]


@pytest.mark.parametrize("provider", ["epay", "alipay", "wechatpay"])
async def test_a_valid_callback_delivers_once_even_replayed_ten_times(
    kami: tuple[FastAPI, str],
    providers: Providers,
    operator_token: str,
    database_url: str,
    provider: str,
) -> None:
    _, url = kami
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        order = await _order(http, operator_token, provider)
        callback = _callbacks(providers)[provider](order["order_no"])
        replies = await asyncio.gather(*(_send(http, provider, callback) for _ in range(10)))
        assert all(r.status_code in (200, 204) for r in replies), [r.text for r in replies]
        if provider != "wechatpay":
            assert {r.text for r in replies} == {"success"}
        assert await _state(database_url, order["order_no"]) == ("delivered", 1, 1)
        view = await http.get(
            f"/v1/orders/{order['order_no']}", params={"token": order["lookup_token"]}
        )
        [key] = view.json()["keys"]
        assert key in order["codes"]


FORGERIES: dict[str, dict[str, dict[str, Any]]] = {
    "epay": {
        "wrong key": {"key": "not-the-merchant-key"},
        "wrong amount": {"money": "0.01"},
        "wrong merchant": {"pid": "9999"},
    },
    "alipay": {
        "forged signature": {"signer": "evil"},
        "wrong amount": {"money": "0.01"},
        "wrong app": {"app_id": "2021999999999999"},
        "wrong seller": {"seller_id": "2088999999999999"},
    },
    "wechatpay": {
        "forged signature": {"signer": "evil"},
        "wrong amount": {"money": "0.01"},
        "wrong merchant": {"mchid": "1900000999"},
        "stale": {"timestamp": 1_000_000_000},
    },
}


@pytest.mark.parametrize(
    ("provider", "forgery"),
    [(p, f) for p, cases in FORGERIES.items() for f in cases],
)
async def test_forged_wrong_and_stale_callbacks_change_nothing(
    kami: tuple[FastAPI, str],
    providers: Providers,
    operator_token: str,
    database_url: str,
    provider: str,
    forgery: str,
) -> None:
    app, url = kami
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        order = await _order(http, operator_token, provider)
        callback = _callbacks(providers)[provider](
            order["order_no"], **FORGERIES[provider][forgery]
        )
        reply = await _send(http, provider, callback)
        assert reply.status_code in (200, 400, 401, 500), reply.text
        assert reply.text != "success" and reply.status_code != 204
        if provider == "wechatpay":
            assert orjson.loads(reply.content)["code"] == "FAIL"
        assert await _state(database_url, order["order_no"]) == ("pending_payment", 0, 0)
        assert await app.state.runtime.pool.stock(order["sku"]) == (2, 1, 0)
