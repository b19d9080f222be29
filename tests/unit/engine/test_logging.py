from __future__ import annotations

import json
import logging

import pytest
import structlog

from engine.logging import REDACTED, configure, redact


def test_secret_named_members_are_redacted() -> None:
    event = redact(
        None,
        "info",
        {
            "event": "x",
            "token": "abc",
            "api_key": "def",
            "password": "ghi",
            "codes": ["CARD-1"],
            "code": "CARD-2",
            "sku": "VIP",
        },
    )
    assert event["token"] == event["api_key"] == event["password"] == REDACTED
    assert event["codes"] == event["code"] == REDACTED
    assert event["sku"] == "VIP"


@pytest.mark.parametrize(
    "text",
    [
        "key kami_live_AbCdEf0123456789_-xyz used",
        "Authorization: Bearer kami_admin_secretsecret",
        "bearer abc.def.ghi",
        "postgresql://kami:hunter2@db:5432/kami",
        "redis://user:pw@cache:6379",
    ],
)
def test_token_shaped_values_are_masked_anywhere(text: str) -> None:
    event = redact(None, "info", {"event": text, "nested": {"headers": [text]}})
    for leaked in ("AbCdEf0123456789", "secretsecret", "abc.def.ghi", "hunter2", ":pw@"):
        assert leaked not in json.dumps(event)


def test_configured_logging_renders_json_without_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info", "json")
    structlog.get_logger("t").info("issued", api_key="kami_live_zzz", sku="VIP")
    logging.getLogger("stdlib").warning("header Bearer kami_admin_qqq seen")
    out = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in out]
    assert records[0]["event"] == "issued"
    assert records[0]["sku"] == "VIP"
    assert "kami_live_zzz" not in out[0]
    assert "kami_admin_qqq" not in out[1]
    assert records[1]["level"] == "warning"
