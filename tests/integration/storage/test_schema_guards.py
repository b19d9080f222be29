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


async def _issuance_parts(db: asyncpg.Connection, tag: str) -> dict[str, int]:
    """An agent with an API key, a product with one key: what an issuance refers to."""
    level = await db.fetchval(
        "INSERT INTO agent_levels (name, rank) VALUES ($1, 1) RETURNING id", f"lvl-{tag}"
    )
    agent = await db.fetchval(
        "INSERT INTO agents (name, level_id) VALUES ($1, $2) RETURNING id", f"a-{tag}", level
    )
    api_key = await db.fetchval(
        "INSERT INTO api_keys (agent_id, mode, prefix, secret_hash) "
        "VALUES ($1, 'live', 'kami_', $2) RETURNING id",
        agent,
        tag.encode().ljust(32, b"k"),
    )
    product = await db.fetchval(
        "INSERT INTO products (sku, name, type, price) VALUES ($1, 'n', 'card', 1) RETURNING id",
        f"REF-{tag}".upper(),
    )
    batch = await db.fetchval("INSERT INTO batches (product_id) VALUES ($1) RETURNING id", product)
    card_key = await db.fetchval(
        "INSERT INTO card_keys (product_id, batch_id, ciphertext, fingerprint) "
        "VALUES ($1, $2, 'c', $3) RETURNING id",
        product,
        batch,
        tag.encode().ljust(32, b"f"),
    )
    return {"agent": agent, "api_key": api_key, "product": product, "card_key": card_key}


_INSERT_ISSUANCE = (
    "INSERT INTO issuances (public_id, agent_id, api_key_id, idempotency_key, request_hash, "
    "holder, product_id, sku, quantity, unit_price, amount, currency) "
    "VALUES ($1, $2, $3, $1, '\\x00', $1, $4, 'X', 1, 1, 1, 'CNY') RETURNING id"
)


@pytest.mark.parametrize("missing", ["agent", "api_key", "product"])
async def test_an_issuance_must_refer_to_rows_that_exist(
    db: asyncpg.Connection, missing: str
) -> None:
    # The hot tables check their references once per statement (migration 0017), not with
    # per-row foreign keys; a dangling id still fails as a foreign key would.
    parts = await _issuance_parts(db, f"iss-{missing}")
    refs = {**parts, missing: 10**12}
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="missing"):
        await db.execute(
            _INSERT_ISSUANCE, f"iss-{missing}", refs["agent"], refs["api_key"], refs["product"]
        )
    assert await db.fetchval("SELECT count(*) FROM issuances WHERE public_id = $1", missing) == 0


async def test_issuance_keys_and_journal_lines_must_refer_to_rows_that_exist(
    db: asyncpg.Connection,
) -> None:
    parts = await _issuance_parts(db, "keys-lines")
    issuance = await db.fetchval(
        _INSERT_ISSUANCE, "keys-lines", parts["agent"], parts["api_key"], parts["product"]
    )
    insert_key = "INSERT INTO issuance_keys (issuance_id, position, card_key_id) VALUES ($1, 0, $2)"
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="missing issuance"):
        await db.execute(insert_key, 10**12, parts["card_key"])
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="missing card key"):
        await db.execute(insert_key, issuance, 10**12)
    await db.execute(insert_key, issuance, parts["card_key"])

    cash = await _account(db, "test:cash:refs", "asset")
    owed = await _account(db, "test:owed:refs", "liability")
    insert_lines = (
        "INSERT INTO journal_lines (entry_id, account_id, amount) VALUES ($1, $2, 5), ($1, $3, -5)"
    )
    async with db.transaction():
        entry = await db.fetchval("INSERT INTO journal_entries (kind) VALUES ('test') RETURNING id")
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="missing account"):
            async with db.transaction():
                await db.execute(insert_lines, entry, cash, 10**12)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="missing journal entry"):
        await db.execute(insert_lines, 10**12, cash, owed)
    assert await db.fetchval("SELECT count(*) FROM journal_lines WHERE account_id = $1", cash) == 0


async def test_what_issuances_refer_to_is_kept_and_cannot_be_repointed(
    db: asyncpg.Connection,
) -> None:
    parts = await _issuance_parts(db, "kept")
    other = await _issuance_parts(db, "kept-other")
    issuance = await db.fetchval(
        _INSERT_ISSUANCE, "kept", parts["agent"], parts["api_key"], parts["product"]
    )
    await db.execute(
        "INSERT INTO issuance_keys (issuance_id, position, card_key_id) VALUES ($1, 0, $2)",
        issuance,
        parts["card_key"],
    )
    for table, row in [
        ("agents", parts["agent"]),
        ("api_keys", parts["api_key"]),
        ("issuances", issuance),
        ("card_keys", parts["card_key"]),
    ]:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="kept"):
            await db.execute(f"DELETE FROM {table} WHERE id = $1", row)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="kept"):
        await db.execute("DELETE FROM accounts")
    for column in ("agent_id", "product_id", "api_key_id"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="cannot change"):
            await db.execute(
                f"UPDATE issuances SET {column} = $2 WHERE id = $1",
                issuance,
                other[column.removesuffix("_id")],
            )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="cannot change"):
        await db.execute(
            "UPDATE issuance_keys SET card_key_id = $2 WHERE issuance_id = $1",
            issuance,
            other["card_key"],
        )
    # What the refund does to an issuance is untouched by the guards.
    await db.execute("UPDATE issuances SET refunded_at = now() WHERE id = $1", issuance)
