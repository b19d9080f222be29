"""Client processes for flash-sale tests: each sends issuances concurrently and retries
retryable answers (503) with the same Idempotency-Key, as a storefront should."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

RETRY_FOR_S = 30.0


async def _one(client: httpx.AsyncClient, sku: str, key: str) -> dict[str, object]:
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            response = await client.post(
                "/v1/issuances",
                json={"sku": sku, "quantity": 1},
                headers={"Idempotency-Key": key},
            )
        except httpx.TransportError:
            status, body = 0, {}
        else:
            status, body = response.status_code, response.json()
        if status not in {0, 503} or time.monotonic() > deadline:
            codes = [k["code"] for k in body.get("keys", [])] if status == 201 else []
            return {"key": key, "status": status, "code": body.get("code"), "codes": codes}
        await asyncio.sleep(0.05)


async def _run(
    base_url: str, api_key: str, sku: str, prefix: str, count: int, conc: int
) -> list[dict[str, object]]:
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=30.0
    ) as client:
        gate = asyncio.Semaphore(conc)

        async def bounded(i: int) -> dict[str, object]:
            async with gate:
                return await _one(client, sku, f"{prefix}-{i}")

        return await asyncio.gather(*(bounded(i) for i in range(count)))


def client_process(
    base_url: str, api_key: str, sku: str, prefix: str, count: int, conc: int, out: str
) -> None:
    results = asyncio.run(_run(base_url, api_key, sku, prefix, count, conc))
    Path(out).write_text(json.dumps(results))
