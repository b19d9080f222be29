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


def decode_master_key(encoded: str) -> bytes:
    """Decode a base64 master key, refusing anything that is not exactly 32 bytes."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("KAMI_MASTER_KEY must be base64") from exc
    if len(raw) != MASTER_KEY_BYTES:
        raise ValueError(f"KAMI_MASTER_KEY must decode to {MASTER_KEY_BYTES} bytes, got {len(raw)}")
    return raw
