"""Session-wide real stores: one PostgreSQL database and one Redis namespace per run."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from engine.settings import Settings
from engine.storage.migrate import migrate
from tests.support.stores import (
    StoreEndpoints,
    create_database,
    delete_namespace,
    drop_database,
    new_run_id,
    open_test_stores,
)


@pytest.fixture(scope="session")
def run_id() -> str:
    return new_run_id()


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreEndpoints]:
    with open_test_stores(tmp_path_factory.mktemp("stores")) as found:
        yield found


@pytest.fixture(scope="session")
def redis_url(stores: StoreEndpoints) -> str:
    return stores.redis_url


@pytest.fixture(scope="session")
def namespace(stores: StoreEndpoints, run_id: str) -> Iterator[str]:
    name = f"kami-test-{run_id}"
    yield name
    delete_namespace(stores.redis_url, name)


@pytest.fixture(scope="session")
async def database_url(stores: StoreEndpoints, run_id: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this run, dropped afterwards."""
    name = f"kami_test_{run_id}"
    url = await create_database(stores.admin_database_url, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield url
    await drop_database(stores.admin_database_url, name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="session")
def settings(
    database_url: str,
    redis_url: str,
    namespace: str,
    master_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    return Settings(
        database_url=SecretStr(database_url),
        redis_url=SecretStr(redis_url),
        redis_namespace=namespace,
        master_key=SecretStr(master_key),
        data_dir=tmp_path_factory.mktemp("data"),
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture(autouse=True)
def _no_kami_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build settings explicitly; a developer's KAMI_* variables must not leak in."""
    for name in list(os.environ):
        if name.startswith("KAMI_") and not name.startswith("KAMI_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
