"""Adding codes to a product's inventory.

Codes are normalised, fingerprinted (HMAC blind index) and encrypted with their row id in
the AAD, then copied into PostgreSQL. Duplicates — within the batch or against the
product's earlier batches — are counted and skipped; the unique index on
(product_id, fingerprint) has the last word, so concurrent imports cannot add one twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from engine._core import fingerprint_many
from engine.catalog.service import Product
from engine.crypto.keyring import Keyring
from engine.storage.db import Connection


@dataclass(frozen=True)
class BatchResult:
    batch_id: int
    accepted: int
    duplicates: int
    rejected: int


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
) -> BatchResult:
    """Add a batch in the caller's transaction (all of it or, on error, none of it).

    `codes` come from the parser (`parse_codes`, `CodeReader`, `screen_codes`), which has
    normalised them; the fingerprint normalises again, so a stray unnormalised code is
    still found as a duplicate of its normal form.
    """
    normalized = list(codes)
    fingerprints = fingerprint_many(keyring.fingerprint_key, normalized)
    unique: dict[bytes, str] = {}
    for fp, code in zip(fingerprints, normalized, strict=True):
        if code:
            unique.setdefault(fp, code)
    within_batch_duplicates = sum(1 for code in normalized if code) - len(unique)

    batch_id: int = await conn.fetchval(
        "INSERT INTO batches (product_id, name, source, unit_cost, expires_at, priority) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        product.id,
        name,
        source,
        unit_cost,
        expires_at,
        priority,
    )
    ids = await _allocate_ids(conn, len(unique))
    ciphertexts = keyring.cipher.encrypt_many(
        product.sku, list(zip(ids, unique.values(), strict=True))
    )
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS incoming_keys "
        "(id bigint, ciphertext bytea, fingerprint bytea) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(
        "incoming_keys",
        records=zip(ids, ciphertexts, unique.keys(), strict=True),
        columns=["id", "ciphertext", "fingerprint"],
    )
    status = await conn.execute(
        "INSERT INTO card_keys (id, product_id, batch_id, ciphertext, fingerprint) "
        "SELECT id, $1, $2, ciphertext, fingerprint FROM incoming_keys "
        "ON CONFLICT (product_id, fingerprint) DO NOTHING",
        product.id,
        batch_id,
    )
    accepted = int(status.split()[-1])
    duplicates = within_batch_duplicates + (len(unique) - accepted)
    await conn.execute("TRUNCATE incoming_keys")
    await conn.execute(
        "UPDATE batches SET accepted = $2, duplicates = $3, rejected = $4 WHERE id = $1",
        batch_id,
        accepted,
        duplicates,
        rejected,
    )
    return BatchResult(batch_id, accepted, duplicates, rejected)


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
