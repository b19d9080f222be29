"""Adding codes to a product's inventory.

Codes are normalised, fingerprinted (HMAC blind index) and encrypted with their row id in
the AAD, then copied into PostgreSQL. Duplicates — within the batch or against the
product's earlier batches — are counted and skipped; the unique index on
(product_id, fingerprint) has the last word, so concurrent imports cannot add one twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from engine._core import distinct_by_fingerprint
from engine.catalog.service import Product
from engine.crypto.keyring import Keyring
from engine.ledger.service import receive_stock
from engine.storage.db import Connection


@dataclass(frozen=True)
class BatchResult:
    batch_id: int
    accepted: int
    duplicates: int
    rejected: int
    # The accepted keys as (ids, ciphertexts) when that is every key of the batch, so the
    # pool can be loaded without reading them back; None when some were skipped.
    keys: tuple[list[int], list[bytes]] | None = field(default=None, repr=False, compare=False)


async def add_codes(
    conn: Connection,
    keyring: Keyring,
    product: Product,
    codes: Sequence[str],
    *,
    name: str = "",
    source: str = "import",
    unit_cost: int = 0,
    expires_at: datetime | None = None,
    priority: int = 0,
    rejected: int = 0,
    mode: str = "live",
    stage: Callable[[int, list[int], list[bytes]], Coroutine[Any, Any, None]] | None = None,
) -> BatchResult:
    """Add a batch in the caller's transaction (all of it or, on error, none of it).

    `stage(batch_id, ids, ciphertexts)`, if given, runs alongside the insert (the pool
    parks the keys meanwhile); it must not raise.

    `codes` come from the parser (`parse_codes`, `CodeReader`, `screen_codes`), which has
    normalised them; the fingerprint normalises again, so a stray unnormalised code is
    still found as a duplicate of its normal form.
    """
    fingerprints, distinct, within_batch_duplicates = distinct_by_fingerprint(
        keyring.fingerprint_key, codes
    )
    batch_id: int = await conn.fetchval(
        "INSERT INTO batches (product_id, name, source, unit_cost, expires_at, priority, mode) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        product.id,
        name,
        source,
        unit_cost,
        expires_at,
        priority,
        mode,
    )
    # Ids follow fingerprint order, so both unique indexes grow by appending.
    ids = await _allocate_ids(conn, len(distinct))
    ciphertexts = keyring.cipher.encrypt_many(product.sku, list(zip(ids, distinct, strict=True)))
    if stage is None:
        accepted = await _insert_keys(conn, product.id, batch_id, ids, ciphertexts, fingerprints)
    else:
        # The pool load runs while PostgreSQL inserts (see `ParkedBatch`); a failed insert
        # cancels it, and the caller discards what was parked.
        staging = asyncio.ensure_future(stage(batch_id, ids, ciphertexts))
        try:
            accepted = await _insert_keys(
                conn, product.id, batch_id, ids, ciphertexts, fingerprints
            )
        except BaseException:
            staging.cancel()
            raise
        await staging
    duplicates = within_batch_duplicates + (len(distinct) - accepted)
    await conn.execute(
        "UPDATE batches SET accepted = $2, duplicates = $3, rejected = $4 WHERE id = $1",
        batch_id,
        accepted,
        duplicates,
        rejected,
    )
    # What the accepted keys cost is owed to their supplier, in the same transaction.
    await receive_stock(
        conn, unit_cost * accepted, currency=product.currency, reference=f"batch:{batch_id}"
    )
    # Every distinct key went in: the pool can be loaded from memory instead of re-read.
    keys = (ids, ciphertexts) if accepted == len(ids) else None
    return BatchResult(batch_id, accepted, duplicates, rejected, keys)


async def _insert_keys(
    conn: Connection,
    product_id: int,
    batch_id: int,
    ids: list[int],
    ciphertexts: list[bytes],
    fingerprints: list[bytes],
) -> int:
    """Insert a batch's keys; returns how many were new to the product.

    The usual batch — nothing in it already in the product's inventory — is one COPY
    straight into card_keys. A key already there makes that COPY fail on the unique index
    and undo itself (it runs in a savepoint); the batch then goes through a temporary
    table and `ON CONFLICT DO NOTHING`, which skips the duplicates.
    """
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "card_keys",
                records=(
                    (key_id, product_id, batch_id, ciphertext, fingerprint)
                    for key_id, ciphertext, fingerprint in zip(
                        ids, ciphertexts, fingerprints, strict=True
                    )
                ),
                columns=["id", "product_id", "batch_id", "ciphertext", "fingerprint"],
            )
        return len(ids)
    except asyncpg.UniqueViolationError:
        pass
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS incoming_keys "
        "(id bigint, ciphertext bytea, fingerprint bytea) ON COMMIT DROP"
    )
    await conn.copy_records_to_table(
        "incoming_keys",
        records=zip(ids, ciphertexts, fingerprints, strict=True),
        columns=["id", "ciphertext", "fingerprint"],
    )
    # The temporary table holds the rows in the order they were copied (id order).
    status = await conn.execute(
        "INSERT INTO card_keys (id, product_id, batch_id, ciphertext, fingerprint) "
        "SELECT id, $1, $2, ciphertext, fingerprint FROM incoming_keys "
        "ON CONFLICT (product_id, fingerprint) DO NOTHING",
        product_id,
        batch_id,
    )
    await conn.execute("DROP TABLE incoming_keys")
    return int(status.split()[-1])


# Serialises id-block allocation between concurrent imports ("KAMIIDS" + 0x01).
_ID_BLOCK_LOCK = 0x4B414D4949445301


async def _allocate_ids(conn: Connection, count: int) -> list[int]:
    """A contiguous block of card-key ids, known before encryption (the AAD binds them).

    One `setval` instead of `count` calls to `nextval`: 1M ids in milliseconds. Card keys
    get their ids only here, so the lock makes the block exclusive.
    """
    if count == 0:
        return []
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ID_BLOCK_LOCK)
    first: int = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('card_keys', 'id'))")
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('card_keys', 'id'), $1)", first + count - 1
    )
    return list(range(first, first + count))
