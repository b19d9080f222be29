"""Schemathesis against the running server's own /openapi.json: whatever the input, no 5xx,
and every response matches the documented schema, status and content type."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.server import KamiProcess, kami_serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KamiProcess, str, str]]:
    data_dir = tmp_path_factory.mktemp("fuzz") / "var"
    token = "kami_admin_" + secrets.token_urlsafe(24)
    with kami_serve("--data-dir", str(data_dir), env={"KAMI_ADMIN_TOKEN": token}) as kami:
        key_line = next(ln for ln in kami.lines if "Demo API key" in ln)
        yield kami, token, key_line.split()[-1]
        kami.stop()


@pytest.fixture(scope="module")
def api_schema(live: tuple[KamiProcess, str, str]) -> schemathesis.BaseSchema:
    kami, _, _ = live
    return schemathesis.openapi.from_url(f"{kami.base_url}/openapi.json")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_no_input_produces_a_server_error(
    api_schema: schemathesis.BaseSchema, live: tuple[KamiProcess, str, str]
) -> None:
    # One Hypothesis run per operation, driven here rather than through
    # schemathesis.pytest.from_fixture (its subtests do not run on this pytest version).
    _, token, api_key = live
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    calls = [
        _fuzz(operation, api_key if operation.path.startswith("/v1/issuances") else token)
        for operation in operations
    ]
    # Every operation was really exercised, the ones with bodies many times over.
    assert min(calls) >= 1
    assert sum(calls) >= 5 * len(operations)


def _fuzz(operation: schemathesis.APIOperation, secret: str) -> int:
    calls = 0

    @settings(
        max_examples=int(os.environ.get("KAMI_FUZZ_EXAMPLES", "25")),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def exercise(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        headers = {"Authorization": f"Bearer {secret}"}
        if case.method == "POST" and not (case.headers or {}).get("Idempotency-Key"):
            headers["Idempotency-Key"] = secrets.token_hex(8)
        case.call_and_validate(headers=headers, checks=CHECKS)

    exercise()
    return calls


def test_the_schema_documents_problem_responses(api_schema: schemathesis.BaseSchema) -> None:
    raw = api_schema.raw_schema
    operation = raw["paths"]["/v1/issuances"]["post"]
    for status in ("400", "401", "402", "403", "404", "409", "422", "503"):
        assert "application/problem+json" in operation["responses"][status]["content"]
    assert "HTTPValidationError" not in str(raw)
