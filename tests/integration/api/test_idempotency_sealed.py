"""Idempotent responses are remembered sealed: a retry replays the secret it first handed
out, byte for byte, while no plaintext secret sits anywhere in PostgreSQL.

Every call that hands out a secret is made with an Idempotency-Key: an API key (with a
signing secret), its rotation, a sub-agent with its key, and the PATCH that creates a
signing secret. Then every row of every table is searched for each secret, as text and as
the hex of its bytes (how a bytea column reads as text).
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from starlette.requests import Request

from api.app import create_app
from api.idempotency import request_hash
from engine import idempotency
from engine._core import Cipher, CryptoError
from engine.settings import Settings
from engine.storage.migrate import MIGRATIONS_DIR, migrate
from tests.integration.issuance.conftest import Shop, make_shop
from tests.integration.orders.conftest import random_ip
from tests.support.stores import StoreEndpoints, create_database, drop_database, new_run_id


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # The sandbox provider, so that a guest order (with its lookup token) can be placed.
    app = create_app(settings.model_copy(update={"sandbox": True}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(random_ip(), 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://kami.test") as c:
            yield c


@pytest.fixture
async def shop(client: httpx.AsyncClient, operator_token: str) -> Shop:
    return await make_shop(client, operator_token, keys=5)


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@dataclass
class Handed:
    """A response that carried a secret, and how to send its request again."""

    method: str
    path: str
    body: object
    headers: dict[str, str]
    response: httpx.Response
    secrets: list[str]


async def _send(
    shop: Shop, method: str, path: str, body: object, headers: dict[str, str]
) -> httpx.Response:
    return await shop.client.request(method, path, json=body, headers=headers)


async def _hand_out_secrets(shop: Shop) -> list[Handed]:
    handed: list[Handed] = []

    async def call(method: str, path: str, body: object, auth: dict[str, str]) -> Handed:
        headers = {**auth, "Idempotency-Key": f"sealed-{secrets.token_hex(8)}"}
        response = await _send(shop, method, path, body, headers)
        assert response.status_code in (200, 201), response.text
        entry = Handed(method, path, body, headers, response, [])
        handed.append(entry)
        return entry

    agents = f"/v1/agents/{shop.agent_id}/api-keys"
    created = await call("POST", agents, {"require_signature": True}, shop.operator)
    key = created.response.json()
    created.secrets = [key["key"], key["signing_secret"]]

    rotated = await call("POST", f"/v1/api-keys/{key['id']}/rotate", {"grace_s": 60}, shop.operator)
    rotated.secrets = [rotated.response.json()["key"]]

    plain = await call("POST", agents, {}, shop.operator)
    plain.secrets = [plain.response.json()["key"]]
    signing = await call(
        "PATCH",
        f"/v1/api-keys/{plain.response.json()['id']}",
        {"require_signature": True},
        shop.operator,
    )
    signing.secrets = [signing.response.json()["signing_secret"]]

    # A parent whose level may create sub-agents, then its sub-agent with a key of its own.
    top = await shop.client.post(
        "/v1/agent-levels",
        json={"name": "top", "rank": 90, "prices": {shop.sku: 1000}},
        headers=shop.operator,
    )
    assert top.status_code == 201, top.text
    allowed = await shop.client.patch(
        f"/v1/agent-levels/{top.json()['id']}",
        json={"can_create_sub_agents": True},
        headers=shop.operator,
    )
    assert allowed.status_code == 200, allowed.text
    low = await shop.client.post(
        "/v1/agent-levels",
        json={"name": "low", "rank": 10, "prices": {shop.sku: 1200}},
        headers=shop.operator,
    )
    parent = await shop.client.post(
        "/v1/agents", json={"name": "p", "level_id": top.json()["id"]}, headers=shop.operator
    )
    parent_key = await shop.client.post(
        f"/v1/agents/{parent.json()['id']}/api-keys", headers=shop.operator
    )
    parent_auth = {"Authorization": f"Bearer {parent_key.json()['key']}"}
    child = await call(
        "POST", "/v1/me/sub-agents", {"name": "小王", "level_id": low.json()["id"]}, parent_auth
    )
    child.secrets = [child.response.json()["api_key"]["key"]]

    # A card-key import (the request carries the secret) and a guest order (its lookup
    # token is the buyer's only credential).
    code = f"IDEM-{secrets.token_hex(10)}"
    imported = await call(
        "POST", f"/v1/products/{shop.sku}/batches", {"codes": [code]}, shop.operator
    )
    imported.secrets = [code]
    order = await call(
        "POST",
        "/v1/orders",
        {
            "sku": shop.sku,
            "quantity": 1,
            "contact": {"email": f"buyer-{secrets.token_hex(4)}@example.com"},
            "payment_method": "sandbox",
        },
        {},
    )
    order.secrets = [order.response.json()["lookup_token"]]

    for entry in handed:
        assert entry.secrets and all(s and len(s) >= 20 for s in entry.secrets), entry.path
    return handed


async def _tables_holding(pg: asyncpg.Connection, needle: str) -> list[str]:
    """Every table (in any schema but the catalogs) with a row whose text holds `needle`:
    a row cast to text includes every column, bytea as `\\x` and its hex."""
    tables = await pg.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
    )
    hexed = needle.encode().hex()
    found = []
    for t in tables:
        name = f'"{t["table_schema"]}"."{t["table_name"]}"'
        hits = await pg.fetchval(
            f"SELECT count(*) FROM {name} r "
            "WHERE strpos(r::text, $1) > 0 OR strpos(lower(r::text), $2) > 0",
            needle,
            hexed,
        )
        if hits:
            found.append(name)
    return found


async def _idempotency_columns_holding(pg: asyncpg.Connection, needle: str) -> list[str]:
    columns = await pg.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'idempotency_records' AND data_type IN ('text', 'bytea', "
        "'character varying', 'json', 'jsonb')"
    )
    assert {c["column_name"] for c in columns} >= {"owner", "key", "request_hash"}
    assert "response_sealed" in {c["column_name"] for c in columns}
    found = []
    for c in columns:
        column = f'"{c["column_name"]}"'
        if c["data_type"] == "bytea":
            condition = f"position($1::bytea IN {column}) > 0"
            value: object = needle.encode()
        else:
            condition = f"strpos({column}::text, $1) > 0"
            value = needle
        hits = await pg.fetchval(
            f"SELECT count(*) FROM idempotency_records WHERE {condition}",
            value,
        )
        if hits:
            found.append(c["column_name"])
    return found


async def test_no_secret_is_at_rest_and_replays_return_it(
    shop: Shop, pg: asyncpg.Connection
) -> None:
    handed = await _hand_out_secrets(shop)

    stored = await pg.fetchval(
        "SELECT count(*) FROM idempotency_records WHERE key = ANY($1::text[]) "
        "AND status IS NOT NULL AND response_sealed IS NOT NULL",
        [h.headers["Idempotency-Key"] for h in handed],
    )
    assert stored == len(handed)  # each response really was remembered
    for entry in handed:
        for secret in entry.secrets:
            assert await _idempotency_columns_holding(pg, secret) == [], entry.path
            assert await _tables_holding(pg, secret) == [], entry.path

    # The request hash is keyed: not the plain SHA-256 that anyone could recompute.
    rotation = handed[1]
    scope = {"type": "http", "method": "POST", "path": rotation.path, "headers": []}
    plain = request_hash(
        Request(scope), {"rotate": int(rotation.path.split("/")[3]), "grace_s": 60}
    )
    kept = await pg.fetchval(
        "SELECT request_hash FROM idempotency_records WHERE key = $1",
        rotation.headers["Idempotency-Key"],
    )
    assert len(kept) == 32 and kept != plain

    # The searches do find what is there: a text column, and bytes in a bytea column.
    some_key = handed[0].headers["Idempotency-Key"]
    assert await _idempotency_columns_holding(pg, some_key) == ["key"]
    canary = f"canary-{secrets.token_hex(12)}"
    await pg.execute(
        "INSERT INTO idempotency_records (owner, key, request_hash, status, response_sealed) "
        "VALUES ('test:canary', $1, '\\x00', 201, $2)",
        canary[:20],
        f"xx{canary}yy".encode(),
    )
    try:
        assert await _idempotency_columns_holding(pg, canary) == ["response_sealed"]
        assert await _tables_holding(pg, canary) == ['"public"."idempotency_records"']
    finally:
        await pg.execute("DELETE FROM idempotency_records WHERE owner = 'test:canary'")

    for entry in handed:
        replay = await _send(shop, entry.method, entry.path, entry.body, entry.headers)
        assert replay.status_code == entry.response.status_code
        assert replay.content == entry.response.content
        assert replay.headers["Idempotent-Replayed"] == "true"
        if entry.path.endswith("/batches"):
            continue  # the codes were only in the request
        for secret in entry.secrets:
            assert secret in replay.text


async def _remembered(shop: Shop) -> tuple[dict[str, str], httpx.Response]:
    headers = {**shop.operator, "Idempotency-Key": f"tamper-{secrets.token_hex(8)}"}
    first = await _send(shop, "POST", f"/v1/agents/{shop.agent_id}/api-keys", {}, headers)
    assert first.status_code == 201, first.text
    return headers, first


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "idempotency_replay_unavailable"


async def test_a_tampered_sealed_body_is_refused(shop: Shop, pg: asyncpg.Connection) -> None:
    headers, _ = await _remembered(shop)
    key = headers["Idempotency-Key"]
    await pg.execute(
        "UPDATE idempotency_records SET response_sealed = "
        "overlay(response_sealed PLACING decode(lpad(to_hex(get_byte(response_sealed, 40) # 1), "
        "2, '0'), 'hex') FROM 41 FOR 1) WHERE key = $1",
        key,
    )
    path = f"/v1/agents/{shop.agent_id}/api-keys"
    _assert_refused(await _send(shop, "POST", path, {}, headers))
    # Refused, not run again: still the one key, and the record is kept (no second run later).
    assert await pg.fetchval("SELECT count(*) FROM idempotency_records WHERE key = $1", key) == 1


async def test_a_body_moved_or_a_status_changed_does_not_open(
    shop: Shop, pg: asyncpg.Connection
) -> None:
    path = f"/v1/agents/{shop.agent_id}/api-keys"
    first_headers, _ = await _remembered(shop)
    second_headers, _ = await _remembered(shop)
    # The first record's sealed body copied onto the second: bound to its own key, it fails.
    await pg.execute(
        "UPDATE idempotency_records SET response_sealed = "
        "(SELECT response_sealed FROM idempotency_records WHERE key = $1) WHERE key = $2",
        first_headers["Idempotency-Key"],
        second_headers["Idempotency-Key"],
    )
    _assert_refused(await _send(shop, "POST", path, {}, second_headers))
    # The status is bound too: a 201 relabelled as 200 does not open.
    await pg.execute(
        "UPDATE idempotency_records SET status = 200 WHERE key = $1",
        first_headers["Idempotency-Key"],
    )
    _assert_refused(await _send(shop, "POST", path, {}, first_headers))


async def test_a_record_without_a_sealed_body_is_refused_not_rerun(
    shop: Shop, pg: asyncpg.Connection
) -> None:
    """What migration 0016 leaves of a completed record written before bodies were sealed."""
    path = f"/v1/agents/{shop.agent_id}/api-keys"
    for legacy in [
        "response_sealed = NULL",  # its body dropped
        "response_sealed = NULL, request_hash = '\\x'",  # and its plain hash too
        "status = NULL, response_sealed = NULL, request_hash = '\\x'",  # was in progress
    ]:
        headers, _ = await _remembered(shop)
        await pg.execute(
            f"UPDATE idempotency_records SET {legacy} WHERE key = $1",
            headers["Idempotency-Key"],
        )
        keys_before = await pg.fetchval(
            "SELECT count(*) FROM api_keys WHERE agent_id = $1", shop.agent_id
        )
        _assert_refused(await _send(shop, "POST", path, {}, headers))
        if "request_hash" in legacy:
            # An emptied hash cannot tell another body apart: refused too, never run.
            _assert_refused(await _send(shop, "POST", path, {"rate_limit_per_s": 5}, headers))
        after = await pg.fetchval(
            "SELECT count(*) FROM api_keys WHERE agent_id = $1", shop.agent_id
        )
        assert after == keys_before, legacy


async def test_the_sweeper_still_forgets_sealed_records(
    shop: Shop, pg: asyncpg.Connection, database_url: str
) -> None:
    old, _ = await _remembered(shop)
    fresh, _ = await _remembered(shop)
    await pg.execute(
        "UPDATE idempotency_records SET created_at = now() - interval '25 hours' WHERE key = $1",
        old["Idempotency-Key"],
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        assert await idempotency.sweep(pool) >= 1
    finally:
        await pool.close()
    remaining = await pg.fetch(
        "SELECT key FROM idempotency_records WHERE key = ANY($1::text[])",
        [old["Idempotency-Key"], fresh["Idempotency-Key"]],
    )
    assert [r["key"] for r in remaining] == [fresh["Idempotency-Key"]]


def test_any_body_round_trips_and_is_bound_to_its_row() -> None:
    cipher = Cipher(secrets.token_bytes(32))
    cipher.generate_data_key(1)
    cipher.set_active(1)
    for body in [b"", '{"key":"kami_live_x","name":"\u5c0f\u738b"}'.encode(), b"\xff\x00\xfe"]:
        sealed = idempotency.seal(cipher, "operator:1", "k-1", 201, body)
        assert body not in sealed or not body
        assert idempotency.unseal(cipher, "operator:1", "k-1", 201, sealed) == body
        # Length-prefixed context: the same characters split otherwise are another row.
        for owner, key, status in [("operator:1k", "-1", 201), ("operator:1", "k-1", 200)]:
            with pytest.raises(CryptoError):
                idempotency.unseal(cipher, owner, key, status, sealed)


async def test_migration_0016_drops_plaintext_bodies_and_keeps_the_claims(
    stores: StoreEndpoints, tmp_path: Path
) -> None:
    name = f"kami_idem_{new_run_id()}"
    url = await create_database(stores.admin_database_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            for migration in MIGRATIONS_DIR.glob("*.sql"):
                if int(migration.name[:4]) < 16:
                    shutil.copy(migration, tmp_path / migration.name)
            await migrate(conn, tmp_path)
            secret = f"kami_live_{secrets.token_hex(16)}"
            await conn.execute(
                "INSERT INTO idempotency_records (owner, key, request_hash, status, response) "
                "VALUES ('operator:1', 'done', $1, 201, $2), "
                "('operator:1', 'running', $1, NULL, NULL)",
                bytes(32),
                f'{{"key":"{secret}"}}'.encode(),
            )
            assert await _tables_holding(conn, secret) == ['"public"."idempotency_records"']

            assert "0016_idempotency_sealed" in await migrate(conn)
            rows = await conn.fetch(
                "SELECT key, request_hash, status, response_sealed FROM idempotency_records "
                "ORDER BY key"
            )
            assert [tuple(r) for r in rows] == [
                ("done", b"", 201, None),
                ("running", b"", None, None),
            ]
            assert await _tables_holding(conn, secret) == []
            # The sweeper's index and the key's check survive the rebuild.
            indexes = await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'idempotency_records'"
            )
            assert {i["indexname"] for i in indexes} == {
                "idempotency_records_pkey",
                "idempotency_records_created",
            }
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    "INSERT INTO idempotency_records (owner, key, request_hash) "
                    "VALUES ('o', '', '\\x00')"
                )
        finally:
            await conn.close()
    finally:
        await drop_database(stores.admin_database_url, name)
