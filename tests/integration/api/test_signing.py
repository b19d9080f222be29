"""Signed requests (docs/SIGNING.md) against real PostgreSQL and Redis, through the real app."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from engine.auth import hash_secret
from engine.signing import sign
from tests.integration.issuance.conftest import Shop, make_shop

DOC = Path(__file__).resolve().parents[3] / "docs" / "SIGNING.md"


def _doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def _doc_auth_class() -> Callable[[str, str], httpx.Auth]:
    """The `KamiAuth` class exactly as the documentation shows it."""
    (source,) = [b for b in _doc_blocks("python") if "class KamiAuth" in b]
    namespace: dict[str, Any] = {}
    exec(compile(source, str(DOC), "exec"), namespace)
    auth: Callable[[str, str], httpx.Auth] = namespace["KamiAuth"]
    return auth


class Signer:
    """A shop whose agent also holds a key that requires signatures."""

    def __init__(self, shop: Shop, key_id: int, key: str, secret: str) -> None:
        self.shop = shop
        self.key_id = key_id
        self.key = key
        self.secret = secret

    def headers(
        self,
        body: bytes,
        *,
        method: str = "POST",
        target: str = "/v1/issuances",
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        return {
            "Authorization": f"Bearer {self.key}",
            "X-Kami-Timestamp": ts,
            "X-Kami-Signature": sign(secret or self.secret, method, target, ts, body),
            "Content-Type": "application/json",
            "Idempotency-Key": secrets.token_hex(8),
        }

    def body(self, quantity: int = 1) -> bytes:
        return json.dumps({"sku": self.shop.sku, "quantity": quantity}).encode()

    async def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.shop.client.post("/v1/issuances", content=body, headers=headers)


async def _signing_key(shop: Shop) -> tuple[int, str, str]:
    created = await shop.client.post(
        f"/v1/agents/{shop.agent_id}/api-keys",
        json={"require_signature": True},
        headers=shop.operator,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["require_signature"] is True
    assert body["signing_secret"].startswith("kami_sig_")
    return body["id"], body["key"], body["signing_secret"]


@pytest.fixture
async def signer(client: httpx.AsyncClient, operator_token: str) -> Signer:
    shop = await make_shop(client, operator_token, keys=10)
    return Signer(shop, *await _signing_key(shop))


async def _nothing_issued(shop: Shop) -> None:
    assert (await shop.stock())["issued"] == 0
    assert await shop.balance() == 1_000_000


async def test_the_documented_httpx_auth_signs_requests_that_are_accepted(
    signer: Signer,
) -> None:
    shop = signer.shop
    auth = _doc_auth_class()(signer.key, signer.secret)
    issued = await shop.client.post(
        "/v1/issuances",
        json={"sku": shop.sku, "quantity": 2},
        headers={"Idempotency-Key": "doc-1"},
        auth=auth,
    )
    assert issued.status_code == 201, issued.text
    assert len(issued.json()["keys"]) == 2
    # A GET signs the empty body; a query string is part of what is signed.
    read = await shop.client.get(f"/v1/issuances/{issued.json()['id']}", auth=auth)
    assert read.status_code == 200, read.text
    assert read.json() == issued.json()
    queried = await shop.client.get(f"/v1/issuances/{issued.json()['id']}?x=1", auth=auth)
    assert queried.status_code == 200, queried.text
    assert (await shop.stock())["issued"] == 2
    assert await shop.balance() == 1_000_000 - 2 * shop.price


def _tamper(signer: Signer, case: str) -> tuple[bytes, dict[str, str]]:
    body = signer.body()
    now = int(time.time())
    if case == "wrong_secret":
        return body, signer.headers(body, secret="kami_sig_" + secrets.token_urlsafe(32))
    if case == "body_tampered":
        return signer.body(5), signer.headers(body)
    if case == "path_tampered":
        return body, signer.headers(body, target="/v1/issuances/other")
    if case == "query_tampered":
        return body, signer.headers(body, target="/v1/issuances?quantity=5")
    if case == "method_tampered":
        return body, signer.headers(body, method="PUT")
    if case == "timestamp_tampered":
        headers = signer.headers(body, timestamp=now - 10)
        return body, {**headers, "X-Kami-Timestamp": str(now)}
    if case == "old_timestamp":
        return body, signer.headers(body, timestamp=now - 301)
    if case == "future_timestamp":
        return body, signer.headers(body, timestamp=now + 301)
    headers = signer.headers(body)
    if case == "missing_signature":
        del headers["X-Kami-Signature"]
    elif case == "missing_timestamp":
        del headers["X-Kami-Timestamp"]
    elif case == "missing_both":
        del headers["X-Kami-Signature"], headers["X-Kami-Timestamp"]
    elif case == "malformed_signature":
        headers["X-Kami-Signature"] = "zz" * 32
    elif case == "malformed_timestamp":
        headers["X-Kami-Timestamp"] = "yesterday"
    return body, headers


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong_secret", "invalid_signature"),
        ("body_tampered", "invalid_signature"),
        ("path_tampered", "invalid_signature"),
        ("query_tampered", "invalid_signature"),
        ("method_tampered", "invalid_signature"),
        ("timestamp_tampered", "invalid_signature"),
        ("old_timestamp", "signature_expired"),
        ("future_timestamp", "signature_expired"),
        ("missing_signature", "invalid_signature"),
        ("missing_timestamp", "invalid_signature"),
        ("missing_both", "invalid_signature"),
        ("malformed_signature", "invalid_signature"),
        ("malformed_timestamp", "invalid_signature"),
    ],
)
async def test_bad_signatures_are_refused_and_issue_nothing(
    signer: Signer, case: str, code: str
) -> None:
    body, headers = _tamper(signer, case)
    response = await signer.post(body, headers)
    assert response.status_code == 401, response.text
    problem = response.json()
    assert problem["code"] == code
    assert response.headers["content-type"] == "application/problem+json"
    assert signer.secret not in response.text and signer.key not in response.text
    await _nothing_issued(signer.shop)


async def test_a_signed_request_is_accepted_once(signer: Signer) -> None:
    body = signer.body()
    now = int(time.time())
    headers = {**signer.headers(body, timestamp=now - 1), "Idempotency-Key": "once"}
    first = await signer.post(body, headers)
    assert first.status_code == 201, first.text

    again = await signer.post(body, headers)
    assert (again.status_code, again.json()["code"]) == (401, "signature_replayed")
    shouted = {**headers, "X-Kami-Signature": headers["X-Kami-Signature"].upper()}
    upper = await signer.post(body, shouted)
    assert (upper.status_code, upper.json()["code"]) == (401, "signature_replayed")

    # An idempotent retry is signed anew, and replays the first response.
    retry = await signer.post(
        body, {**signer.headers(body, timestamp=now), "Idempotency-Key": "once"}
    )
    assert retry.status_code == 201, retry.text
    assert retry.content == first.content
    assert (await signer.shop.stock())["issued"] == 1


async def test_keys_without_the_flag_are_unaffected(signer: Signer) -> None:
    shop = signer.shop
    assert (await shop.issue(1)).status_code == 201
    # Signature headers, even wrong ones, mean nothing to a key that does not sign.
    ignored = await shop.client.post(
        "/v1/issuances",
        json={"sku": shop.sku, "quantity": 1},
        headers={
            **shop.agent(),
            "Idempotency-Key": "plain-2",
            "X-Kami-Timestamp": "1",
            "X-Kami-Signature": "00" * 32,
        },
    )
    assert ignored.status_code == 201, ignored.text
    assert (await shop.stock())["issued"] == 2


async def test_an_operator_switches_signing_on_rotates_and_off(
    signer: Signer, database_url: str
) -> None:
    shop = signer.shop
    plain_id = await _key_id(database_url, shop.api_key)
    path = f"/v1/api-keys/{plain_id}"

    on = await shop.client.patch(path, json={"require_signature": True}, headers=shop.operator)
    assert on.status_code == 200, on.text
    assert on.json()["require_signature"] is True
    secret = on.json()["signing_secret"]
    assert secret.startswith("kami_sig_")
    assert (await shop.issue(1)).json()["code"] == "invalid_signature"
    user = Signer(shop, plain_id, shop.api_key, secret)
    body = user.body()
    assert (await user.post(body, user.headers(body))).status_code == 201

    # Asking again neither changes nor shows the secret.
    same = await shop.client.patch(path, json={"require_signature": True}, headers=shop.operator)
    assert same.json()["signing_secret"] is None

    rotated = await shop.client.patch(
        path, json={"require_signature": True, "rotate_signing_secret": True}, headers=shop.operator
    )
    new_secret = rotated.json()["signing_secret"]
    assert new_secret not in (None, secret)
    stale = await user.post(body, user.headers(body))
    assert (stale.status_code, stale.json()["code"]) == (401, "invalid_signature")
    fresh = await user.post(body, user.headers(body, secret=new_secret))
    assert fresh.status_code == 201, fresh.text

    off = await shop.client.patch(path, json={"require_signature": False}, headers=shop.operator)
    assert (off.status_code, off.json()["require_signature"]) == (200, False)
    assert off.json()["signing_secret"] is None
    assert (await shop.issue(1)).status_code == 201
    assert (await shop.stock())["issued"] == 3


async def test_update_errors(signer: Signer) -> None:
    shop = signer.shop
    missing = await shop.client.patch(
        "/v1/api-keys/999999999", json={"require_signature": True}, headers=shop.operator
    )
    assert (missing.status_code, missing.json()["code"]) == (404, "api_key_not_found")
    as_agent = await shop.client.patch(
        f"/v1/api-keys/{signer.key_id}", json={"require_signature": False}, headers=shop.agent()
    )
    assert (as_agent.status_code, as_agent.json()["code"]) == (403, "forbidden")
    bad = await shop.client.patch(
        f"/v1/api-keys/{signer.key_id}", json={"require_signature": "no"}, headers=shop.operator
    )
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")


async def test_the_secret_is_stored_sealed_and_never_audited(
    signer: Signer, database_url: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        sealed = await conn.fetchval(
            "SELECT signing_secret_sealed FROM api_keys WHERE id = $1", signer.key_id
        )
        audit = await conn.fetch(
            "SELECT detail::text AS detail FROM audit_log WHERE subject = $1",
            f"agent:{signer.shop.agent_id}",
        )
    finally:
        await conn.close()
    secret = signer.secret.encode()
    assert sealed and secret not in sealed and secret.split(b"_")[-1] not in sealed
    assert audit and all(signer.secret not in row["detail"] for row in audit)
    assert any('"require_signature": true' in row["detail"] for row in audit)


async def test_the_documented_curl_script_signs_requests_that_are_accepted(
    signer: Signer,
) -> None:
    """Runs the doc's shell block with `curl` replaced by a shim that prints its arguments,
    then sends exactly those headers and that body to the application."""
    setup, script = _doc_blocks("sh")[-2:]
    assert "KAMI_SIGNING_SECRET=" in setup
    shim = 'curl() { for a in "$@"; do printf "%s\\0" "$a"; done; }\n'
    env = {
        "PATH": "/usr/bin:/bin",
        "KAMI_URL": "http://kami.test",
        "KAMI_API_KEY": signer.key,
        "KAMI_SIGNING_SECRET": signer.secret,
    }
    script = script.replace("DEMO-VIP-MONTH", signer.shop.sku)
    process = await asyncio.create_subprocess_exec(
        "/bin/bash",
        "-euo",
        "pipefail",
        "-c",
        shim + script,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0, stderr.decode()
    args = stdout.decode().split("\0")[:-1]
    headers: dict[str, str] = {}
    body = b""
    for flag, value in itertools.pairwise(args):
        if flag == "-H":
            name, _, header_value = value.partition(": ")
            headers[name] = header_value
        elif flag == "--data-raw":
            body = value.encode()
    assert args[args.index("-X") + 1] == "POST", shlex.join(args)
    response = await signer.post(body, headers)
    assert response.status_code == 201, response.text
    assert (await signer.shop.stock())["issued"] == 1


async def _key_id(database_url: str, api_key: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        key_id: int = await conn.fetchval(
            "SELECT id FROM api_keys WHERE secret_hash = $1", hash_secret(api_key)
        )
    finally:
        await conn.close()
    return key_id
