"""What runs once before a server takes traffic: master key, migrations, owner, demo."""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from engine.auth import ensure_owner_token
from engine.runtime import StoreUnreachable, describe
from engine.settings import MASTER_KEY_BYTES, Settings, decode_master_key
from engine.storage.migrate import migrate

log = structlog.get_logger(__name__)

MASTER_KEY_FILE = "master.key"


@dataclass
class BootstrapReport:
    migrations_applied: list[str]
    generated_admin_token: str | None
    demo_api_key: str | None


def ensure_master_key(settings: Settings) -> bytes:
    """The configured master key, or on the embedded default one generated once into the
    data dir (mode 0600) and reused on every later start."""
    if settings.master_key is not None:
        return decode_master_key(settings.master_key.get_secret_value())
    path = Path(settings.data_dir) / MASTER_KEY_FILE
    if path.exists():
        return decode_master_key(path.read_text(encoding="ascii"))
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode()
    # O_EXCL: two processes racing on a fresh data dir cannot both write a key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(encoded + "\n")
    log.info("master_key_generated", path=str(path))
    return decode_master_key(encoded)


async def connect(database_url: str) -> asyncpg.Connection:
    try:
        conn: asyncpg.Connection = await asyncpg.connect(database_url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise StoreUnreachable(f"cannot connect to PostgreSQL: {describe(exc)}") from exc
    return conn


async def bootstrap(settings: Settings, *, seed_demo: bool) -> BootstrapReport:
    """Migrate, create the owner token and (first start only) seed the demo."""
    assert settings.database_url is not None
    master_key = ensure_master_key(settings)
    conn = await connect(settings.database_url.get_secret_value())
    try:
        applied = await migrate(conn)
        admin_token = await ensure_owner_token(
            conn, settings.admin_token.get_secret_value() if settings.admin_token else None
        )
        demo_key: str | None = None
        if seed_demo:
            from engine.demo import seed_demo_if_absent

            demo_key = await seed_demo_if_absent(conn, master_key)
    finally:
        await conn.close()
    return BootstrapReport(applied, admin_token, demo_key)
