"""The command line against real stores: import, rebuild, demo."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.support.server import kami_serve, run_kami

pytestmark = pytest.mark.slow


def test_import_into_a_running_server_and_rebuild(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    token = "kami_admin_" + secrets.token_urlsafe(24)
    keys = tmp_path / "keys.csv"
    codes = [f"CLI-{i:04d}-{secrets.token_hex(4)}" for i in range(300)]
    rows = ["卡密,备注", *[f"{c},月卡" for c in codes], f"{codes[0]},重复", "bad\u0007code,x"]
    keys.write_bytes("\r\n".join(rows).encode("gb18030"))
    env = {"KAMI_ADMIN_TOKEN": token}
    with kami_serve("--data-dir", str(data_dir), "--no-demo", env=env) as kami:
        operator = {"Authorization": f"Bearer {token}"}
        created = httpx.post(
            f"{kami.base_url}/v1/products",
            json={"sku": "CLI-SKU", "name": "n", "type": "card", "price": 100},
            headers=operator,
        )
        assert created.status_code == 201
        # The data dir belongs to the running server: the CLI uses its stores.
        imported = run_kami(
            "import", "CLI-SKU", str(keys), "--column", "0", "--data-dir", str(data_dir), env={}
        )
        assert imported.returncode == 0, imported.stderr
        # The header row is a code to the parser; it is accepted like any other line.
        assert "301 accepted, 1 duplicates, 1 rejected" in imported.stdout
        assert "control_characters" in imported.stdout
        stock = httpx.get(f"{kami.base_url}/v1/products/CLI-SKU", headers=operator).json()
        assert stock["stock"] == {"available": 301, "held": 0, "issued": 0}

        rebuilt = run_kami("pools", "rebuild", "CLI-SKU", "--data-dir", str(data_dir), env={})
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert rebuilt.stdout.strip() == "CLI-SKU: 301 available"

        missing = run_kami("import", "NOPE", str(keys), "--data-dir", str(data_dir), env={})
        assert missing.returncode != 0
        assert missing.stderr.strip().splitlines()[-1] == (
            "kami: product_not_found: No product with SKU NOPE."
        )
        assert kami.stop() == 0


def test_demo_prints_a_working_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    result = run_kami("demo", "--data-dir", str(data_dir), env={})
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().split()[-1]
    assert key.startswith("kami_live_")
    with kami_serve("--data-dir", str(data_dir), env={}) as kami:
        issued = httpx.post(
            f"{kami.base_url}/v1/issuances",
            json={"sku": "DEMO-VIP-MONTH", "quantity": 2},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "demo-cli"},
        )
        assert issued.status_code == 201, issued.text
        assert len(issued.json()["keys"]) == 2
        assert issued.json()["amount"] == 3000
        kami.stop()
