"""Invariants 1 and 3 over real HTTP: a flash sale from several client processes against
`kami serve` with two workers, undisturbed, with Redis SIGKILLed and restarted, and with
Redis flushed mid-run. No key is ever issued twice; every 201 is a committed issuance."""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.integration.core.servers import Server, server_binary
from tests.support.load import client_process
from tests.support.server import kami_serve
from tests.support.stores import StoreEndpoints, create_database, drop_database, new_run_id

pytestmark = pytest.mark.slow

KEYS = 1500
REQUESTS_PER_CLIENT = 500
CLIENTS = 4
PRICE = 100
DEPOSIT = 10_000_000


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Server]:
    binary = server_binary()
    if binary is None:
        pytest.skip("no redis-server/valkey-server binary")
    server = Server(binary, tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def fresh_database(stores: StoreEndpoints) -> Iterator[str]:
    name = f"kami_sale_{new_run_id()}"
    url = await create_database(stores.admin_database_url, name)
    yield url
    await drop_database(stores.admin_database_url, name)


def _setup(base_url: str, token: str) -> tuple[str, list[str], str, int]:
    operator = {"Authorization": f"Bearer {token}"}
    sku = f"SALE-{secrets.token_hex(3).upper()}"
    codes = [f"{sku}-{i:05d}-{secrets.token_hex(6)}" for i in range(KEYS)]
    with httpx.Client(base_url=base_url, headers=operator, timeout=60) as c:
        assert (
            c.post(
                "/v1/products", json={"sku": sku, "name": "秒杀月卡", "type": "card", "price": 1990}
            ).status_code
            == 201
        )
        imported = c.post(f"/v1/products/{sku}/batches", json={"codes": codes})
        assert imported.json()["accepted"] == KEYS, imported.text
        level = c.post(
            "/v1/agent-levels", json={"name": "sale", "rank": 1, "prices": {sku: PRICE}}
        ).json()
        agent = c.post("/v1/agents", json={"name": "shop", "level_id": level["id"]}).json()
        c.post(f"/v1/agents/{agent['id']}/deposits", json={"amount": DEPOSIT})
        key = c.post(f"/v1/agents/{agent['id']}/api-keys").json()["key"]
    return sku, codes, key, agent["id"]


def _disrupt(mode: str, redis_server: Server, base_url: str, token: str, sku: str) -> int:
    """Break Redis once the sale is under way; returns how many keys were issued by then."""
    if mode == "none":
        return 0
    deadline = time.monotonic() + 60
    issued = 0
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as c:
        while time.monotonic() < deadline and issued < 300:
            issued = c.get(f"/v1/products/{sku}").json()["stock"]["issued"]
            time.sleep(0.01)
    if mode == "kill":
        redis_server.kill()
        time.sleep(0.5)
        redis_server.start()
    elif mode == "flush":
        client = redis_server.client()
        client.flushall()
        client.close()
    return issued


@pytest.mark.parametrize("mode", ["none", "kill", "flush"])
def test_flash_sale_never_issues_a_key_twice(
    mode: str, redis_server: Server, fresh_database: str, tmp_path: Path
) -> None:
    token = "kami_admin_" + secrets.token_urlsafe(24)
    env = {
        "KAMI_DATABASE_URL": fresh_database,
        "KAMI_REDIS_URL": redis_server.url,
        "KAMI_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "KAMI_ADMIN_TOKEN": token,
        "KAMI_DATA_DIR": str(tmp_path / "var"),
        "KAMI_LOG_LEVEL": "warning",
    }
    with kami_serve("--workers", "2", "--no-demo", env=env) as kami:
        sku, codes, api_key, agent_id = _setup(kami.base_url, token)
        context = multiprocessing.get_context("spawn")
        outputs = [tmp_path / f"client-{n}.json" for n in range(CLIENTS)]
        clients = [
            context.Process(
                target=client_process,
                args=(kami.base_url, api_key, sku, f"c{n}", REQUESTS_PER_CLIENT, 25, str(out)),
            )
            for n, out in enumerate(outputs)
        ]
        for process in clients:
            process.start()
        issued_when_disrupted = _disrupt(mode, redis_server, kami.base_url, token, sku)
        for process in clients:
            process.join(timeout=180)
            assert process.exitcode == 0
        stock = httpx.get(
            f"{kami.base_url}/v1/products/{sku}", headers={"Authorization": f"Bearer {token}"}
        ).json()["stock"]
        kami.stop()

    if mode != "none":
        assert 300 <= issued_when_disrupted < KEYS  # the disruption hit a sale in progress
    results = [r for out in outputs for r in json.loads(out.read_text())]
    statuses = [r["status"] for r in results]
    issued_codes = [c for r in results for c in r["codes"]]
    assert statuses.count(201) == KEYS, sorted(set(statuses))
    others = [(r["status"], r["code"]) for r in results if r["status"] not in {201, 409}]
    assert others == []
    assert statuses.count(409) == CLIENTS * REQUESTS_PER_CLIENT - KEYS
    assert {r["code"] for r in results if r["status"] == 409} == {"out_of_stock"}
    assert len(issued_codes) == len(set(issued_codes)) == KEYS
    assert set(issued_codes) == set(codes)
    assert stock == {"available": 0, "held": 0, "issued": KEYS}

    in_db, issuances, balance, lines, unbalanced = asyncio.run(
        _database_totals(fresh_database, sku, agent_id)
    )
    assert in_db == issuances == KEYS
    assert balance == lines == DEPOSIT - KEYS * PRICE
    assert unbalanced == 0


async def _database_totals(url: str, sku: str, agent_id: int) -> tuple[int, ...]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT "
            "(SELECT count(DISTINCT card_key_id) FROM issuance_keys ik "
            " JOIN issuances i ON i.id = ik.issuance_id WHERE i.sku = $1) AS keys, "
            "(SELECT count(*) FROM issuances WHERE sku = $1) AS issuances, "
            "(SELECT -balance FROM accounts WHERE agent_id = $2) AS balance, "
            "(SELECT -sum(amount) FROM journal_lines l JOIN accounts a ON a.id = l.account_id "
            " WHERE a.agent_id = $2) AS lines, "
            "(SELECT coalesce(sum(amount), 0) FROM journal_lines) AS unbalanced",
            sku,
            agent_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return tuple(int(v) for v in row.values())
