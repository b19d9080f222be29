from __future__ import annotations

import io

import httpx
import pytest

from engine import Pool
from engine.runtime import require_urls
from engine.settings import Settings
from tests.integration.api.conftest import unique_sku

PROBLEM = "application/problem+json"


async def _product(operator: httpx.AsyncClient, **overrides: object) -> dict[str, object]:
    body = {"sku": unique_sku(), "name": "视频月卡", "type": "card", "price": 1990, **overrides}
    response = await operator.post("/v1/products", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


async def test_create_and_read_a_product(operator: httpx.AsyncClient) -> None:
    created = await _product(operator)
    assert created["price"] == 1990
    assert created["currency"] == "CNY"
    assert created["status"] == "active"
    assert created["stock"] == {"available": 0, "held": 0, "issued": 0}
    read = await operator.get(f"/v1/products/{created['sku']}")
    assert read.status_code == 200
    assert read.json() == created


async def test_duplicate_sku_is_a_conflict(operator: httpx.AsyncClient) -> None:
    created = await _product(operator)
    again = await operator.post(
        "/v1/products", json={"sku": created["sku"], "name": "x", "type": "card", "price": 1}
    )
    assert again.status_code == 409
    assert again.json()["code"] == "sku_exists"


async def test_unknown_product_is_404(operator: httpx.AsyncClient) -> None:
    response = await operator.get("/v1/products/NOPE-404")
    assert response.status_code == 404
    assert response.json()["code"] == "product_not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"sku": "bad sku", "name": "n", "type": "card", "price": 1},
        {"sku": "OK1", "name": "n", "type": "voucher", "price": 1},
        {"sku": "OK1", "name": "n", "type": "card", "price": -1},
        {"sku": "OK1", "name": "n", "type": "card", "price": "1990"},
        {"sku": "OK1", "name": "n", "type": "card", "price": 19.9},
        {"sku": "OK1", "name": "n", "type": "card", "price": 10**20},
        {"sku": "OK1", "name": "", "type": "card", "price": 1},
        {"sku": "OK1", "name": "n", "type": "card", "price": 1, "currency": "cny"},
        {"sku": "OK1", "name": "n", "type": "card", "price": 1, "surprise": True},
        {"sku": "OK1\u0000", "name": "n", "type": "card", "price": 1},
        {"name": "n", "type": "card", "price": 1},
        [],
    ],
)
async def test_bad_products_are_422_and_change_nothing(
    operator: httpx.AsyncClient, body: object
) -> None:
    response = await operator.post("/v1/products", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] == "invalid_request"
    assert response.json()["errors"]
    assert (await operator.get("/v1/products/OK1")).status_code == 404


async def test_malformed_json_is_400(operator: httpx.AsyncClient) -> None:
    response = await operator.post(
        "/v1/products", content=b'{"sku": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_request"


async def test_catalog_needs_an_operator(client: httpx.AsyncClient) -> None:
    anonymous = await client.post("/v1/products", json={})
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthenticated"
    forged = await client.get(
        "/v1/products/X", headers={"Authorization": "Bearer kami_admin_forged"}
    )
    assert forged.status_code == 401


async def test_json_batch_counts_duplicates_and_rejects(
    operator: httpx.AsyncClient, settings: Settings
) -> None:
    pool = Pool(require_urls(settings)[1], namespace=settings.redis_namespace)
    product = await _product(operator)
    sku = product["sku"]
    codes = ["AAAA-1", "  AAAA-2  ", "AAAA-1", "", "x" * 600, "bad\u0007code", "line\nbreak"]
    first = await operator.post(f"/v1/products/{sku}/batches", json={"codes": codes})
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 3)
    assert {r["line"] for r in body["rejected_lines"]} == {5, 6, 7}
    assert await pool.stock(str(sku)) == (2, 0, 0)

    # Across batches: already-present codes are duplicates, never added twice.
    second = await operator.post(
        f"/v1/products/{sku}/batches", json={"codes": ["AAAA-2", "AAAA-3"], "unit_cost": 1200}
    )
    assert (second.json()["accepted"], second.json()["duplicates"]) == (1, 1)
    stock = (await operator.get(f"/v1/products/{sku}")).json()["stock"]
    assert stock == {"available": 3, "held": 0, "issued": 0}
    # The batch with a duplicate went through the skipping insert: only its new key is
    # in the pool, read back from PostgreSQL.
    assert await pool.stock(str(sku)) == (3, 0, 0)


async def test_file_batches_txt_csv_gbk(operator: httpx.AsyncClient) -> None:
    product = await _product(operator)
    sku = product["sku"]
    txt = "\ufeffTXT-1\r\nTXT-2\r\n\r\nTXT-3\n".encode()
    response = await operator.post(
        f"/v1/products/{sku}/batches",
        files={"file": ("keys.txt", io.BytesIO(txt), "text/plain")},
        data={"name": "txt batch", "unit_cost": "1500"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["accepted"] == 3

    gbk_csv = '卡号,备注\n"CSV-1",会员\nCSV-2,月卡\n'.encode("gbk")
    response = await operator.post(
        f"/v1/products/{sku}/batches",
        files={"file": ("keys.csv", io.BytesIO(gbk_csv), "text/csv")},
        data={"column": "0"},
    )
    assert response.status_code == 201, response.text
    # The header row is a code as far as the parser knows; it is counted, not guessed away.
    assert response.json()["accepted"] == 3


async def test_a_malformed_file_is_422_and_loads_nothing(operator: httpx.AsyncClient) -> None:
    product = await _product(operator)
    sku = product["sku"]
    response = await operator.post(
        f"/v1/products/{sku}/batches",
        files={
            "file": ("keys.xlsx", io.BytesIO(b"PK\x03\x04 not really a zip"), "application/zip")
        },
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_file"
    assert response.json()["errors"][0]["line"] == 0
    stock = (await operator.get(f"/v1/products/{sku}")).json()["stock"]
    assert stock["available"] == 0


async def test_batch_for_unknown_product_is_404(operator: httpx.AsyncClient) -> None:
    response = await operator.post("/v1/products/NOPE-1/batches", json={"codes": ["A"]})
    assert response.status_code == 404
    assert response.json()["code"] == "product_not_found"


async def test_a_column_a_text_file_does_not_have_is_422(operator: httpx.AsyncClient) -> None:
    product = await _product(operator)
    response = await operator.post(
        f"/v1/products/{product['sku']}/batches",
        files={"file": ("keys.txt", io.BytesIO(b"A\nB\n"), "text/plain")},
        data={"format": "txt", "column": "3"},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_file"
    assert "one column" in response.json()["detail"]


@pytest.mark.parametrize("name", ["nul\u0000inside", "bell\u0007", "tab\tname"])
async def test_control_characters_in_names_are_422(operator: httpx.AsyncClient, name: str) -> None:
    response = await operator.post(
        "/v1/products", json={"sku": unique_sku(), "name": name, "type": "card", "price": 1}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


async def test_an_xlsx_batch_is_imported(operator: httpx.AsyncClient) -> None:
    from tests.support.xlsx import one_column_xlsx

    product = await _product(operator)
    workbook = one_column_xlsx(["XLSX-1", "XLSX-2", "", "XLSX-1", "卡密-3"])
    response = await operator.post(
        f"/v1/products/{product['sku']}/batches",
        files={"file": ("keys.xlsx", io.BytesIO(workbook), "application/octet-stream")},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    # An empty cell that is there (unlike a blank text line) is refused as "empty".
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 1, 1)
