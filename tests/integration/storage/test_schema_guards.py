"""The schema itself enforces what must never happen, whatever the application does."""

from __future__ import annotations

import asyncpg
import pytest


async def _account(db: asyncpg.Connection, code: str, kind: str) -> int:
    account_id: int = await db.fetchval(
        "INSERT INTO accounts (code, kind) VALUES ($1, $2) RETURNING id", code, kind
    )
    return account_id


async def test_journal_is_append_only(db: asyncpg.Connection) -> None:
    cash = await _account(db, "test:cash:append", "asset")
    owed = await _account(db, "test:owed:append", "liability")
    async with db.transaction():
        entry = await db.fetchval("INSERT INTO journal_entries (kind) VALUES ('test') RETURNING id")
        await db.execute(
            "INSERT INTO journal_lines (entry_id, account_id, amount) "
            "VALUES ($1, $2, 500), ($1, $3, -500)",
            entry,
            cash,
            owed,
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE journal_lines SET amount = 1 WHERE entry_id = $1", entry)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM journal_entries WHERE id = $1", entry)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM audit_log")


async def test_an_unbalanced_entry_cannot_commit(db: asyncpg.Connection) -> None:
    cash = await _account(db, "test:cash:unbalanced", "asset")
    owed = await _account(db, "test:owed:unbalanced", "liability")
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        async with db.transaction():
            entry = await db.fetchval(
                "INSERT INTO journal_entries (kind) VALUES ('test') RETURNING id"
            )
            await db.execute(
                "INSERT INTO journal_lines (entry_id, account_id, amount) "
                "VALUES ($1, $2, 500), ($1, $3, -499)",
                entry,
                cash,
                owed,
            )
    assert await db.fetchval("SELECT count(*) FROM journal_lines WHERE account_id = $1", cash) == 0


@pytest.mark.parametrize("sku", ["", "has space", "-leading-dash", "x" * 65, "中文"])
async def test_bad_skus_are_refused_by_the_schema(db: asyncpg.Connection, sku: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO products (sku, name, type, price) VALUES ($1, 'n', 'card', 100)", sku
        )


async def test_card_key_fingerprints_are_unique_per_product(db: asyncpg.Connection) -> None:
    product = await db.fetchval(
        "INSERT INTO products (sku, name, type, price) VALUES ('FP-UNIQ', 'n', 'card', 1) "
        "RETURNING id"
    )
    batch = await db.fetchval("INSERT INTO batches (product_id) VALUES ($1) RETURNING id", product)
    insert = (
        "INSERT INTO card_keys (product_id, batch_id, ciphertext, fingerprint) "
        "VALUES ($1, $2, $3, $4)"
    )
    await db.execute(insert, product, batch, b"c1", b"f" * 32)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, product, batch, b"c2", b"f" * 32)


async def test_products_batches_and_key_owners_cannot_be_changed_away(
    db: asyncpg.Connection,
) -> None:
    # card_keys has no per-row foreign keys (they cost imports seconds); these guards keep
    # what they protected: the rows a key points at stay, and a key cannot be re-pointed.
    product = await db.fetchval(
        "INSERT INTO products (sku, name, type, price) VALUES ('KEEP-ME', 'n', 'card', 1) "
        "RETURNING id"
    )
    other = await db.fetchval(
        "INSERT INTO products (sku, name, type, price) VALUES ('KEEP-TOO', 'n', 'card', 1) "
        "RETURNING id"
    )
    batch = await db.fetchval("INSERT INTO batches (product_id) VALUES ($1) RETURNING id", product)
    key = await db.fetchval(
        "INSERT INTO card_keys (product_id, batch_id, ciphertext, fingerprint) "
        "VALUES ($1, $2, 'c', $3) RETURNING id",
        product,
        batch,
        b"k" * 32,
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM products WHERE id = $1", product)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM batches WHERE id = $1", batch)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="cannot change"):
        await db.execute("UPDATE card_keys SET product_id = $2 WHERE id = $1", key, other)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="cannot change"):
        await db.execute("UPDATE card_keys SET batch_id = batch_id + 1 WHERE id = $1", key)
    # Changing the state (what issuance does) is untouched by the guard.
    await db.execute("UPDATE card_keys SET state = 'issued' WHERE id = $1", key)
    assert await db.fetchval("SELECT count(*) FROM products WHERE id = $1", product) == 1
