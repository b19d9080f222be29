"""`kami import`: a key file from disk into a product's inventory and its pool."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import asyncpg

from engine import audit
from engine._core import Pool
from engine.catalog.service import get_product
from engine.crypto.keyring import load_keyring
from engine.inventory.files import read_codes_file
from engine.inventory.pools import ParkedBatch
from engine.inventory.service import BatchResult, add_codes


@dataclass
class _FileSource:
    """The async `read` that `read_codes_file` streams from, over a local file."""

    handle: BinaryIO
    filename: str
    on_read: Callable[[int], None]

    async def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        self.on_read(len(chunk))
        return chunk


@dataclass(frozen=True)
class ImportReport:
    batch: BatchResult
    rejected_rows: list[tuple[int, str]]
    published: int


async def import_file(
    database_url: str,
    redis_url: str,
    namespace: str,
    master_key: bytes,
    *,
    sku: str,
    path: Path,
    name: str,
    expires_at: datetime | None,
    unit_cost: int,
    file_format: str | None,
    column: int | None,
    on_read: Callable[[int], None] = lambda _n: None,
) -> ImportReport:
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with db.acquire() as conn:
            keyring = await load_keyring(conn, master_key)
            product = await get_product(conn, sku)
        with path.open("rb") as handle:
            codes, rejected = await read_codes_file(
                _FileSource(handle, path.name, on_read),
                declared_format=file_format,
                column=column,
            )
        parked = ParkedBatch(Pool(redis_url, namespace=namespace), sku, expires_at)
        try:
            async with db.acquire() as conn, conn.transaction():
                result = await add_codes(
                    conn,
                    keyring,
                    product,
                    codes,
                    name=name or path.name,
                    unit_cost=unit_cost,
                    expires_at=expires_at,
                    rejected=len(rejected),
                    stage=parked.park,
                )
                await audit.record(
                    conn,
                    "cli",
                    "batch.imported",
                    f"product:{sku}",
                    {"batch_id": result.batch_id, "accepted": result.accepted, "file": path.name},
                )
        except BaseException:
            await parked.discard()
            raise
        published = await parked.publish(db, result)
        return ImportReport(result, rejected, published)
    finally:
        await db.close()
