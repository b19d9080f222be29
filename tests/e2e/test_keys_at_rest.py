"""Invariant 5: no plaintext key in PostgreSQL, Redis, logs or any file under the data dir.

Canary codes are imported and some are issued through a real `kami serve` on the embedded
default, logging at debug level; then every byte under the data dir (database files, WAL,
Valkey's append-only file, logs) and everything the process printed is searched.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.support.server import kami_serve

pytestmark = pytest.mark.slow


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_plaintext_keys_are_nowhere_at_rest(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    token = "kami_admin_" + secrets.token_urlsafe(24)
    canaries = [f"CANARY-{secrets.token_hex(12).upper()}" for _ in range(40)]
    env = {"KAMI_ADMIN_TOKEN": token, "KAMI_LOG_LEVEL": "debug"}
    with kami_serve("--data-dir", str(data_dir), "--no-demo", env=env) as kami:
        operator = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=kami.base_url, headers=operator, timeout=30) as c:
            assert (
                c.post(
                    "/v1/products", json={"sku": "CANARY", "name": "c", "type": "card", "price": 1}
                ).status_code
                == 201
            )
            assert (
                c.post("/v1/products/CANARY/batches", json={"codes": canaries}).status_code == 201
            )
            level = c.post("/v1/agent-levels", json={"name": "l", "rank": 1}).json()
            agent = c.post("/v1/agents", json={"name": "a", "level_id": level["id"]}).json()
            c.post(f"/v1/agents/{agent['id']}/deposits", json={"amount": 1000})
            # With Idempotency-Keys, so that their responses are remembered (sealed) too.
            keys = f"/v1/agents/{agent['id']}/api-keys"
            key = c.post(keys, headers={"Idempotency-Key": "canary-key"}).json()["key"]
            signing = c.post(
                keys, json={"require_signature": True}, headers={"Idempotency-Key": "canary-sig"}
            ).json()
            signing_secret = signing["signing_secret"]
            issued = c.post(
                "/v1/issuances",
                json={"sku": "CANARY", "quantity": 5},
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "canary-1"},
            )
            assert issued.status_code == 201
            delivered = {k["code"] for k in issued.json()["keys"]}
            assert delivered <= set(canaries)
            # Force the data out of buffers into files: a checkpoint, and an AOF rewrite.
            c.get("/readyz")
        assert kami.stop() == 0

    secrets_handed_out = [*canaries, key, signing["key"], signing_secret]
    needles = [c.encode() for c in secrets_handed_out] + [
        c.encode("utf-16-le") for c in secrets_handed_out
    ]
    searched = 0
    for path in _files(data_dir):
        content = path.read_bytes()
        searched += len(content)
        for needle in needles:
            assert needle not in content, f"plaintext secret in {path.relative_to(data_dir)}"
    assert searched > 1_000_000  # the database really was there to search
    printed = kami.output
    assert '"level": "debug"' in printed  # debug logging was really on
    for canary in canaries:
        assert canary not in printed
    assert key not in printed
    assert signing_secret not in printed
