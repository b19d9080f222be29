from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from engine.notify import OutboxWorker, enqueue_email
from engine.notify.email import render, resolve_locale
from engine.settings import Settings
from tests.integration.notify.conftest import status_of, work_until
from tests.support.receivers import SmtpSink, free_port

# What a card key looks like in this test; it must never appear in a mail.
CARD_KEY = "VIPM-7Q2K-99XZ-ABCD"
REVEAL_URL = "https://shop.example/r/rv_4f1c2b9e8d7a6f5e"
LOOKUP_URL = "https://shop.example/orders/K20261122000042"


def delivered_context(**overrides: Any) -> dict[str, Any]:
    return {
        "order_no": "K20261122000042",
        "sku": "VIP-MONTH",
        "product_name": "视频月卡 <VIP>",
        "quantity": 2,
        "reveal_url": REVEAL_URL,
        "reveal_expires_at": datetime(2026, 11, 23, 8, 30, tzinfo=UTC),
        "lookup_url": LOOKUP_URL,
        **overrides,
    }


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def mail_settings(fast: Settings, smtp: SmtpSink) -> Settings:
    return fast.model_copy(
        update={
            "smtp_host": smtp.host,
            "smtp_port": smtp.port,
            "smtp_security": "none",
            "smtp_from": "Kami Shop <shop@kami.example>",
        }
    )


async def deliver_all(pool: asyncpg.Pool, settings: Settings, db: asyncpg.Connection) -> None:
    worker = OutboxWorker(pool, settings)

    async def all_sent() -> bool:
        left: int = await db.fetchval("SELECT count(*) FROM outbox WHERE status <> 'sent'")
        return left == 0

    try:
        await work_until(worker, all_sent)
    finally:
        await worker.close()


async def test_delivery_mails_arrive_in_both_languages_with_the_link_and_no_key(
    db: asyncpg.Connection, pool: asyncpg.Pool, mail_settings: Settings, smtp: SmtpSink
) -> None:
    async with db.transaction():
        zh = await enqueue_email(
            db, "buyer@example.cn", "order_delivered", "zh-CN", delivered_context()
        )
        en = await enqueue_email(
            db, "buyer@example.com", "order_delivered", "en-US", delivered_context()
        )
    await deliver_all(pool, mail_settings, db)

    mails = {m.rcpt_tos[0]: m for m in smtp.messages()}
    assert set(mails) == {"buyer@example.cn", "buyer@example.com"}
    chinese, english = mails["buyer@example.cn"], mails["buyer@example.com"]
    assert chinese.message["Subject"] == "您的订单 K20261122000042 已发货：视频月卡 <VIP>"  # noqa: RUF001
    assert english.message["Subject"] == "Your order K20261122000042 is ready: 视频月卡 <VIP>"
    assert "请打开以下链接查看卡密" in chinese.part("plain")
    assert "Open this link to see your card keys" in english.part("plain")
    for mail, outbox_id in ((chinese, zh), (english, en)):
        text, html = mail.part("plain"), mail.part("html")
        assert REVEAL_URL in text
        assert f'href="{REVEAL_URL}"' in html
        assert LOOKUP_URL in text
        assert "2026-11-23 08:30 UTC" in text
        # Merchant input is markup-escaped in HTML, left as typed in plain text.
        assert "视频月卡 &lt;VIP&gt;" in html
        assert "<VIP>" not in html
        assert "视频月卡 <VIP>" in text
        raw = mail.message.as_string()
        assert CARD_KEY not in raw
        assert mail.mail_from == "shop@kami.example"
        message_id = (await status_of(db, outbox_id))["message_id"]
        assert mail.message["Message-ID"] == f"<{message_id}@kami.example>"


async def test_refund_mail_formats_the_amount(
    db: asyncpg.Connection, pool: asyncpg.Pool, mail_settings: Settings, smtp: SmtpSink
) -> None:
    context = {"order_no": "K1", "amount": 199000, "currency": "CNY"}
    async with db.transaction():
        await enqueue_email(db, "a@example.cn", "order_refunded", "zh-CN", context)
        await enqueue_email(
            db, "b@example.com", "order_refunded", "en", {**context, "currency": "USD"}
        )
    await deliver_all(pool, mail_settings, db)
    mails = {m.rcpt_tos[0]: m for m in smtp.messages()}
    assert "已退款：¥1,990.00" in mails["a@example.cn"].part("plain")  # noqa: RUF001
    assert "refunded: $1,990.00" in mails["b@example.com"].part("plain")
    assert "<strong>$1,990.00</strong>" in mails["b@example.com"].part("html")


async def test_a_mail_context_that_carries_keys_or_misses_fields_is_refused(
    db: asyncpg.Connection,
) -> None:
    for key in ("keys", "code", "card_keys"):
        with pytest.raises(ValueError, match="must not carry card keys"):
            await enqueue_email(
                db, "a@example.cn", "order_delivered", "zh-CN", delivered_context(**{key: CARD_KEY})
            )
    missing = delivered_context()
    del missing["reveal_url"]
    with pytest.raises(ValueError, match="does not render"):
        await enqueue_email(db, "a@example.cn", "order_delivered", "en", missing)
    with pytest.raises(ValueError, match="unknown email template"):
        await enqueue_email(db, "a@example.cn", "order_lost", "en", {})
    with pytest.raises(ValueError, match="single email address"):
        await enqueue_email(db, "a@example.cn\r\nBcc: x@y", "order_refunded", "en", {})
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


def test_locales_fall_back_to_the_nearest_we_have() -> None:
    assert resolve_locale("zh-CN") == "zh-CN"
    assert resolve_locale("zh_cn") == "zh-CN"
    assert resolve_locale("zh-TW") == "zh-CN"
    assert resolve_locale("en-GB") == "en"
    assert resolve_locale("fr") == "zh-CN"
    assert resolve_locale("") == "zh-CN"
    subject = render(
        "order_delivered", "en", delivered_context(product_name="a\r\nBcc: evil@example.com")
    ).subject
    assert "\n" not in subject
    assert "\r" not in subject


async def test_without_smtp_mails_wait_and_an_unreachable_server_is_retried(
    db: asyncpg.Connection, pool: asyncpg.Pool, fast: Settings
) -> None:
    outbox_id = await enqueue_email(
        db,
        "a@example.cn",
        "order_refunded",
        "en",
        {"order_no": "K1", "amount": 1, "currency": "CNY"},
    )
    unconfigured = OutboxWorker(pool, fast)
    down = OutboxWorker(
        pool,
        fast.model_copy(
            update={"smtp_host": "127.0.0.1", "smtp_port": free_port(), "smtp_security": "none"}
        ),
    )
    try:
        assert await unconfigured.run_once() == 0  # left pending, attempts untouched
        assert (await status_of(db, outbox_id))["attempts"] == 0
        assert await down.run_once() == 1
    finally:
        await unconfigured.close()
        await down.close()
    row = await status_of(db, outbox_id)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["last_error"] in {"SMTPConnectError", "ConnectionRefusedError"}
    expires = datetime.now(UTC) + timedelta(seconds=5)
    assert await db.fetchval(
        "SELECT next_attempt_at < $1 FROM outbox WHERE id = $2", expires, outbox_id
    )
