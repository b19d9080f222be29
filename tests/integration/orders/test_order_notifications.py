"""A paid order reaches the storefront by a signed webhook and the buyer by email — over
a real SMTP server (aiosmtpd) and a real HTTP receiver that is failing at first."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import orjson

from api.app import create_app
from engine.settings import Settings
from tests.integration.api.conftest import unique_sku
from tests.support.receivers import SmtpSink, WebhookReceiver


async def _until(condition: object, timeout_s: float = 15.0) -> None:
    assert callable(condition)
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_a_paid_order_is_announced_by_webhook_and_email(
    settings: Settings, operator_token: str
) -> None:
    with SmtpSink() as smtp:
        fast = settings.model_copy(
            update={
                "sandbox": True,
                "smtp_host": smtp.host,
                "smtp_port": smtp.port,
                "smtp_security": "none",
                "outbox_backoff_base_s": 0.01,
                "outbox_backoff_cap_s": 0.05,
                "outbox_poll_interval_s": 0.02,
            }
        )
        app = create_app(fast)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            auth = {"Authorization": f"Bearer {operator_token}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
                sku = unique_sku("N")
                await c.post(
                    "/v1/products",
                    headers=auth,
                    json={"sku": sku, "name": "月卡", "type": "card", "price": 500},
                )
                codes = [f"{sku}-{secrets.token_hex(5)}"]
                await c.post(f"/v1/products/{sku}/batches", headers=auth, json={"codes": codes})

                # The storefront's receiver is down for its first two attempts.
                receiver = WebhookReceiver(fail_first=2)
                endpoint = await c.post(
                    "/v1/webhook-endpoints",
                    headers=auth,
                    json={"url": receiver.url, "event_types": ["order.paid", "order.delivered"]},
                )
                assert endpoint.status_code == 201, endpoint.text
                receiver.secret = endpoint.json()["secret"]
                try:
                    with receiver:
                        email = f"buyer-{secrets.token_hex(3)}@example.com"
                        order = (
                            await c.post(
                                "/v1/orders",
                                json={
                                    "sku": sku,
                                    "quantity": 1,
                                    "contact": {"email": email},
                                    "payment_method": "sandbox",
                                    "locale": "en",
                                },
                            )
                        ).json()
                        paid = await c.post(f"/v1/payments/sandbox/{order['order_no']}/pay")
                        assert paid.json()["result"] == "delivered"

                        def mine() -> list[dict[str, object]]:
                            events = [orjson.loads(a.body) for a in receiver.delivered()]
                            return [
                                e
                                for e in events
                                if e["data"]["order_no"] == order["order_no"]  # type: ignore[index]
                            ]

                        await _until(lambda: len(mine()) == 2)
                        await _until(lambda: any(email in m.rcpt_tos for m in smtp.messages()))
                finally:
                    await c.delete(f"/v1/webhook-endpoints/{endpoint.json()['id']}", headers=auth)
    assert sorted(e["type"] for e in mine()) == ["order.delivered", "order.paid"]  # type: ignore[type-var]
    assert all(a.verified for a in receiver.delivered())
    [mail] = [m for m in smtp.messages() if email in m.rcpt_tos]
    text = mail.part("plain")
    assert f"/v1/orders/{order['order_no']}/reveal?link=" in text
    assert codes[0] not in text and codes[0] not in mail.part("html")
