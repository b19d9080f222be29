"""Loads the data keys and the fingerprint key a process needs, creating them on first use.

The master key never touches the database. Data keys are stored wrapped by it; the
fingerprint key (the HMAC key of the duplicate-detection blind index) is random, stored
sealed under a data key, and separate from every encryption key.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

from engine._core import Cipher
from engine.storage.db import Connection

FINGERPRINT_SECRET = "fingerprint_key"  # noqa: S105 - a row name, not a secret
# AAD for sealed secrets: a name no SKU can have (SKUs start with an alphanumeric).
_SEALED_SKU = "__kami_sealed__"
_SEALED_ENTRY = 0


@dataclass(frozen=True)
class Keyring:
    cipher: Cipher
    fingerprint_key: bytes

    def __repr__(self) -> str:
        return f"Keyring(active_key_id={self.cipher.active_key_id})"


async def load_keyring(conn: Connection, master_key: bytes) -> Keyring:
    cipher = Cipher(master_key)
    async with conn.transaction():
        # One process creates the first data key; the others wait and load it.
        await conn.execute("LOCK TABLE data_keys IN SHARE ROW EXCLUSIVE MODE")
        rows = await conn.fetch("SELECT id, wrapped, active FROM data_keys ORDER BY id")
        for row in rows:
            cipher.add_data_key(row["id"], row["wrapped"], active=row["active"])
        if not rows:
            wrapped = cipher.generate_data_key(1)
            await conn.execute(
                "INSERT INTO data_keys (id, wrapped, active) VALUES (1, $1, true)", wrapped
            )
            cipher.set_active(1)
        sealed = await conn.fetchval(
            "SELECT ciphertext FROM sealed_secrets WHERE name = $1", FINGERPRINT_SECRET
        )
        if sealed is None:
            encoded = base64.b64encode(secrets.token_bytes(32)).decode()
            sealed = cipher.encrypt(_SEALED_SKU, _SEALED_ENTRY, encoded)
            await conn.execute(
                "INSERT INTO sealed_secrets (name, ciphertext) VALUES ($1, $2)",
                FINGERPRINT_SECRET,
                sealed,
            )
    fingerprint_key = base64.b64decode(cipher.decrypt(_SEALED_SKU, _SEALED_ENTRY, sealed))
    return Keyring(cipher=cipher, fingerprint_key=fingerprint_key)
