"""Build the enabled payment providers from settings, once per process."""

from __future__ import annotations

from engine.payments.alipay import AlipayProvider
from engine.payments.base import PaymentProvider
from engine.payments.epay import EpayProvider
from engine.payments.sandbox import SandboxProvider
from engine.payments.wechatpay import WechatPayProvider
from engine.settings import Settings


def notify_url(settings: Settings, provider: str) -> str:
    """Where `provider` calls back: `POST /v1/payments/{provider}/notify` (GET for epay)."""
    return f"{settings.public_base_url}/v1/payments/{provider}/notify"


def return_url(settings: Settings) -> str:
    """Where the buyer lands after paying; `{order_no}` is left for the provider to fill."""
    return settings.payment_return_url or settings.public_base_url


def build_providers(settings: Settings) -> dict[str, PaymentProvider]:
    """The providers whose settings are complete, by name.

    Settings already refused half-configured providers, so "enabled" is a single field
    per provider here. Keys are parsed now: a bad key stops start-up, not a buyer.
    """
    providers: dict[str, PaymentProvider] = {}
    if settings.sandbox_enabled:
        secret = settings.sandbox_secret
        providers["sandbox"] = SandboxProvider(
            public_base_url=settings.public_base_url,
            secret=secret.get_secret_value().encode() if secret else None,
        )
    if settings.epay_url and settings.epay_pid and settings.epay_key:
        providers["epay"] = EpayProvider(
            gateway_url=settings.epay_url,
            pid=settings.epay_pid,
            key=settings.epay_key.get_secret_value(),
            notify_url=notify_url(settings, "epay"),
            return_url=return_url(settings),
            pay_type=settings.epay_type,
            method=settings.epay_method,
            timeout_s=settings.payment_timeout_s,
        )
    if settings.alipay_app_id and settings.alipay_private_key and settings.alipay_public_key:
        providers["alipay"] = AlipayProvider(
            app_id=settings.alipay_app_id,
            private_key=settings.alipay_private_key.get_secret_value(),
            alipay_public_key=settings.alipay_public_key,
            notify_url=notify_url(settings, "alipay"),
            return_url=settings.payment_return_url,
            seller_id=settings.alipay_seller_id,
            gateway=settings.alipay_gateway,
            method=settings.alipay_method,
            timeout_s=settings.payment_timeout_s,
        )
    if (
        settings.wechatpay_mchid
        and settings.wechatpay_appid
        and settings.wechatpay_private_key
        and settings.wechatpay_cert_serial
        and settings.wechatpay_apiv3_key
        and settings.wechatpay_public_key
        and settings.wechatpay_public_key_id
    ):
        providers["wechatpay"] = WechatPayProvider(
            mchid=settings.wechatpay_mchid,
            appid=settings.wechatpay_appid,
            private_key=settings.wechatpay_private_key.get_secret_value(),
            cert_serial=settings.wechatpay_cert_serial,
            apiv3_key=settings.wechatpay_apiv3_key.get_secret_value(),
            platform_public_key=settings.wechatpay_public_key,
            platform_public_key_id=settings.wechatpay_public_key_id,
            notify_url=notify_url(settings, "wechatpay"),
            gateway=settings.wechatpay_gateway,
            timeout_s=settings.payment_timeout_s,
        )
    return providers
