from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from engine.settings import Settings, decode_master_key

GOOD_KEY = base64.b64encode(b"k" * 32).decode()


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults_are_the_embedded_default() -> None:
    settings = make()
    assert settings.embedded
    assert settings.sandbox_enabled
    assert settings.port == 8000
    assert str(settings.data_dir) == "var"


def test_environment_variables_use_the_kami_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAMI_PORT", "9001")
    monkeypatch.setenv("KAMI_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("KAMI_WORKERS", "4")
    settings = make()
    assert (settings.port, settings.log_level, settings.workers) == (9001, "debug", 4)


@pytest.mark.parametrize(
    "url",
    ["mysql://localhost/kami", "not a url", "postgresql:///nohost", "http://localhost"],
)
def test_malformed_database_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="database_url"):
        make(database_url=url, redis_url="redis://localhost", master_key=GOOD_KEY)


@pytest.mark.parametrize("url", ["http://localhost:6379", "redis://", "unix://"])
def test_malformed_redis_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        make(database_url="postgresql://localhost/kami", redis_url=url, master_key=GOOD_KEY)


def test_unix_socket_urls_are_accepted() -> None:
    settings = make(
        database_url="postgresql://postgres@/kami?host=/tmp/pg",
        redis_url="unix:///tmp/valkey.sock",
        master_key=GOOD_KEY,
    )
    assert not settings.embedded


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (base64.b64encode(b"short").decode(), "32 bytes, got 5"),
        (base64.b64encode(b"x" * 33).decode(), "32 bytes, got 33"),
        ("not base64 !!", "must be base64"),
    ],
)
def test_master_key_must_be_32_bytes_of_base64(value: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        make(master_key=value)


def test_master_key_is_required_with_external_stores() -> None:
    with pytest.raises(ValidationError, match="KAMI_MASTER_KEY is required"):
        make(database_url="postgresql://localhost/kami", redis_url="redis://localhost")


@pytest.mark.parametrize("token", ["changeme", "admin", "short-token"])
def test_placeholder_admin_token_is_refused_in_production(token: str) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        make(environment="production", admin_token=token, master_key=GOOD_KEY)


def test_placeholder_admin_token_is_allowed_in_development() -> None:
    assert make(admin_token="changeme").admin_token is not None


def test_sandbox_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="SANDBOX"):
        make(environment="production", sandbox=True)


def test_sandbox_is_off_by_default_with_external_stores() -> None:
    settings = make(
        database_url="postgresql://localhost/kami",
        redis_url="redis://localhost",
        master_key=GOOD_KEY,
    )
    assert not settings.sandbox_enabled


def test_secrets_do_not_appear_in_repr() -> None:
    settings = make(
        database_url="postgresql://kami:hunter2@localhost/kami",
        redis_url="redis://:hunter3@localhost",
        master_key=GOOD_KEY,
        admin_token="a-real-token-of-sufficient-length",
    )
    text = repr(settings) + str(settings.model_dump())
    for secret in ("hunter2", "hunter3", GOOD_KEY, "a-real-token"):
        assert secret not in text


def test_decode_master_key_round_trips() -> None:
    assert decode_master_key(GOOD_KEY) == b"k" * 32


@pytest.mark.parametrize("field", ["port", "workers"])
def test_out_of_range_numbers_are_refused(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        make(**{field: -1})
