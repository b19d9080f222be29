"""Kami's settings: one pydantic-settings class, every variable prefixed `KAMI_`.

Settings are read once at start and passed into services; nothing in `engine` imports a
global settings object, so tests build their own.
"""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MASTER_KEY_BYTES = 32

# Values people paste from examples. Refused outside development, where a real secret
# must be set.
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "changethis", "secret", "password", "admin", "token", "test", ""}
)


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class Settings(BaseSettings):
    """Everything Kami reads from its environment (`KAMI_*`) or a `.env` file."""

    model_config = SettingsConfigDict(
        env_prefix="KAMI_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    environment: Environment = Environment.DEVELOPMENT
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:pass@host:port/db). "
        "Unset: an embedded PostgreSQL is started under the data dir.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis/Valkey URL (redis://, rediss://, unix://). "
        "Unset: an embedded Valkey is started under the data dir.",
    )
    redis_namespace: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = Field(
        default="kami",
        description="Prefix of every Redis key, so deployments (or test runs) can share a Redis.",
    )
    data_dir: Path = Field(default=Path("var"), description="Embedded stores, master key, lock.")
    admin_token: SecretStr | None = Field(
        default=None,
        description="The owner's operator token on first start; generated and printed if unset.",
    )
    master_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 bytes; wraps the data keys that encrypt card keys.",
    )
    sandbox: bool | None = Field(
        default=None,
        description="Enable the sandbox payment provider. Default: on with embedded stores.",
    )
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["json", "console"] = "json"
    server: Literal["granian", "uvicorn"] = "granian"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(value.get_secret_value())
            if parts.scheme not in {"postgres", "postgresql"}:
                raise ValueError("must be a postgresql:// URL")
            if not (parts.hostname or "host=" in parts.query):
                raise ValueError("must name a host (or a unix socket via ?host=)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(value.get_secret_value())
            if parts.scheme in {"redis", "rediss", "valkey", "valkeys"}:
                if not parts.hostname:
                    raise ValueError("must name a host")
            elif parts.scheme in {"unix", "redis+unix", "valkey+unix"}:
                if not parts.path:
                    raise ValueError("must name a socket path")
            else:
                raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("master_key")
    @classmethod
    def _check_master_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_master_key(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment is Environment.PRODUCTION:
            token = self.admin_token.get_secret_value() if self.admin_token else None
            if token is not None and (token.lower() in PLACEHOLDER_SECRETS or len(token) < 24):
                raise ValueError(
                    "KAMI_ADMIN_TOKEN is a placeholder or shorter than 24 characters; "
                    "set a real secret in production"
                )
            if self.sandbox:
                raise ValueError("KAMI_SANDBOX cannot be on in production")
        if self.uses_external_stores and self.master_key is None:
            raise ValueError(
                "KAMI_MASTER_KEY is required with an external database or Redis "
                "(base64 of 32 random bytes: python -c "
                "'import base64,os;print(base64.b64encode(os.urandom(32)).decode())')"
            )
        return self

    @property
    def uses_external_stores(self) -> bool:
        return self.database_url is not None or self.redis_url is not None

    @property
    def embedded(self) -> bool:
        """True when Kami starts its own PostgreSQL and Valkey (neither URL set)."""
        return self.database_url is None and self.redis_url is None

    @property
    def sandbox_enabled(self) -> bool:
        return self.embedded if self.sandbox is None else self.sandbox

    # --- notify: outbox worker, SMTP, webhooks (engine/notify) --------------------------
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="The URL buyers reach Kami at, for links in emails. "
        "Default: http://KAMI_HOST:KAMI_PORT.",
    )
    smtp_host: str | None = Field(
        default=None, description="SMTP server. Unset: emails wait in the outbox until set."
    )
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = Field(default="Kami <noreply@localhost>", description="The From header.")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls: upgrade a plain connection (port 587); tls: implicit TLS "
        "(port 465); none: plain text, for a relay on the same host only.",
    )
    smtp_timeout_s: Annotated[float, Field(gt=0, le=300)] = 15.0
    webhook_timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    outbox_poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    outbox_max_attempts: Annotated[int, Field(ge=1, le=100)] = 16
    outbox_backoff_base_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    outbox_backoff_cap_s: Annotated[float, Field(gt=0, le=86400)] = 3600.0

    @property
    def public_base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    # --- end notify ---------------------------------------------------------------------

    # --- payments: providers (engine/payments) ------------------------------------------
    # A provider is enabled when its required fields are all set; setting only some of them
    # is refused at start, so a typo cannot silently switch a payment method off.
    sandbox_secret: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key of sandbox callbacks. Unset: random per process, which "
        "suffices because the sandbox pay endpoint signs and verifies in the same process.",
    )
    payment_return_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="Where a provider sends the buyer back after paying; {order_no} is "
        "replaced. Default: KAMI_PUBLIC_URL.",
    )
    payment_timeout_s: Annotated[float, Field(gt=0, le=120)] = 15.0
    epay_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="易支付 V1 gateway base URL (submit.php, mapi.php and api.php live under it).",
    )
    epay_pid: str | None = None
    epay_key: SecretStr | None = None
    epay_type: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]{1,32}$",
        description="alipay, wxpay, qqpay...; unset: the gateway's own cashier (submit only).",
    )
    epay_method: Literal["submit", "mapi"] = Field(
        default="submit",
        description="submit: send the buyer to submit.php; mapi: ask mapi.php for a pay URL/QR.",
    )
    alipay_app_id: str | None = None
    alipay_private_key: SecretStr | None = Field(
        default=None, description="The app's RSA2 private key: PEM, a file path, or bare base64."
    )
    alipay_public_key: str | None = Field(
        default=None, description="Alipay's RSA2 public key: PEM, a file path, or bare base64."
    )
    alipay_seller_id: str | None = Field(
        default=None, description="When set, callbacks for another seller (PID) are refused."
    )
    alipay_gateway: str = Field(
        default="https://openapi.alipay.com/gateway.do", pattern=r"^https?://[^\s]+$"
    )
    alipay_method: Literal["page", "qr"] = Field(
        default="page",
        description="page: alipay.trade.page.pay URL; qr: alipay.trade.precreate QR code.",
    )
    wechatpay_mchid: str | None = None
    wechatpay_appid: str | None = None
    wechatpay_private_key: SecretStr | None = Field(
        default=None, description="Merchant API private key: PEM, a file path, or bare base64."
    )
    wechatpay_cert_serial: str | None = Field(
        default=None, description="Serial number of the merchant API certificate."
    )
    wechatpay_apiv3_key: SecretStr | None = Field(default=None, description="32-byte APIv3 key.")
    wechatpay_public_key: str | None = Field(
        default=None,
        description="WeChat Pay platform public key (public-key mode): PEM, path or base64.",
    )
    wechatpay_public_key_id: str | None = Field(
        default=None, description="Its id (PUB_KEY_ID_...), sent as Wechatpay-Serial."
    )
    wechatpay_gateway: str = Field(
        default="https://api.mch.weixin.qq.com", pattern=r"^https?://[^\s]+$"
    )

    @property
    def epay_enabled(self) -> bool:
        return self.epay_url is not None

    @property
    def alipay_enabled(self) -> bool:
        return self.alipay_app_id is not None

    @property
    def wechatpay_enabled(self) -> bool:
        return self.wechatpay_mchid is not None

    @model_validator(mode="after")
    def _check_payment_providers(self) -> Settings:
        apiv3_key = self.wechatpay_apiv3_key
        if apiv3_key is not None and len(apiv3_key.get_secret_value().encode()) != 32:
            raise ValueError("KAMI_WECHATPAY_APIV3_KEY must be 32 bytes")
        groups = {
            "KAMI_EPAY": (self.epay_url, self.epay_pid, self.epay_key),
            "KAMI_ALIPAY": (self.alipay_app_id, self.alipay_private_key, self.alipay_public_key),
            "KAMI_WECHATPAY": (
                self.wechatpay_mchid,
                self.wechatpay_appid,
                self.wechatpay_private_key,
                self.wechatpay_cert_serial,
                self.wechatpay_apiv3_key,
                self.wechatpay_public_key,
                self.wechatpay_public_key_id,
            ),
        }
        for prefix, values in groups.items():
            if any(v is not None for v in values) and any(v is None for v in values):
                raise ValueError(f"{prefix}_* is partly set; set all of its fields or none")
        if self.epay_method == "mapi" and self.epay_enabled and self.epay_type is None:
            raise ValueError("KAMI_EPAY_METHOD=mapi needs KAMI_EPAY_TYPE (alipay, wxpay...)")
        if self.environment is Environment.PRODUCTION:
            for name, secret in (
                ("KAMI_EPAY_KEY", self.epay_key),
                ("KAMI_SANDBOX_SECRET", self.sandbox_secret),
            ):
                if secret is not None and secret.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                    raise ValueError(f"{name} is a placeholder; set a real secret in production")
        return self

    # --- end payments -------------------------------------------------------------------

    # --- API keys (engine/ratelimit.py, engine/principals.py) ---------------------------
    api_key_rate_limit_per_s: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        default=0,
        description="Requests per second an API key may make unless the key sets its own "
        "rate_limit_per_s; 0: no limit (a key's own limit still applies).",
    )
    # --- end API keys ---------------------------------------------------------------------

    # --- orders (engine/orders) ---------------------------------------------------------
    order_payment_window_s: Annotated[int, Field(ge=60, le=86400)] = Field(
        default=900, description="How long an unpaid order holds its keys (expires_at)."
    )
    # Reservation caps: what one contact, IP address or device may hold unpaid at once, so
    # nobody can freeze the stock by opening orders.
    order_max_unpaid_per_contact: Annotated[int, Field(ge=1, le=1000)] = 3
    order_max_unpaid_units_per_contact: Annotated[int, Field(ge=1, le=10000)] = 10
    order_max_unpaid_per_ip: Annotated[int, Field(ge=1, le=1000)] = 10
    order_max_unpaid_units_per_ip: Annotated[int, Field(ge=1, le=10000)] = 50
    order_max_unpaid_per_device: Annotated[int, Field(ge=1, le=1000)] = 3
    order_lookup_misses_per_minute: Annotated[int, Field(ge=1, le=10000)] = Field(
        default=20, description="Failed order lookups one IP may make per minute."
    )
    order_reveal_link_ttl_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 3 * 86400
    order_sweep_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # --- end orders ---------------------------------------------------------------------

    # --- agent levels and tree (engine/distribution/levels.py, tree.py, upgrades.py) ----
    agent_max_depth: Annotated[int, Field(ge=1, le=32)] = Field(
        default=3, description="How many levels deep the agent tree may grow (top level: 1)."
    )
    agent_upgrade_interval_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        default=3600.0, description="How often the level upgrade rules run."
    )
    # --- end agent levels ---------------------------------------------------------------


def decode_master_key(encoded: str) -> bytes:
    """Decode a base64 master key, refusing anything that is not exactly 32 bytes."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("KAMI_MASTER_KEY must be base64") from exc
    if len(raw) != MASTER_KEY_BYTES:
        raise ValueError(f"KAMI_MASTER_KEY must decode to {MASTER_KEY_BYTES} bytes, got {len(raw)}")
    return raw
