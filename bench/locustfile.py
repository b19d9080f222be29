"""Flash sale (秒杀) on one hot SKU: every user POSTs /v1/issuances with a fresh
Idempotency-Key, quantity 1, as fast as it can (or paced, see KAMI_BENCH_USER_RPS).

By hand, against any deployment:

    KAMI_BENCH_API_KEY=kami_live_… KAMI_BENCH_SKU=DEMO-VIP-MONTH \\
        locust -f bench/locustfile.py --host http://127.0.0.1:8000

Environment:
    KAMI_BENCH_API_KEY   an agent API key (Bearer), required for the issuance scenario
    KAMI_BENCH_SKU       the hot SKU (default DEMO-VIP-MONTH)
    KAMI_BENCH_MODE      issue (default) | noop (GET /livez, the framework ceiling)
    KAMI_BENCH_USER_RPS  if set, each user is paced to this many requests/s (open-ish load
                         for latency at a chosen rate); unset: no wait (saturation)

Failures are named by status and problem code ("409 out_of_stock"), so Locust's failure
table is the error breakdown by code.
"""

from __future__ import annotations

import os
import uuid

from locust import FastHttpUser, constant, constant_throughput, task

API_KEY = os.environ.get("KAMI_BENCH_API_KEY", "")
SKU = os.environ.get("KAMI_BENCH_SKU", "DEMO-VIP-MONTH")
MODE = os.environ.get("KAMI_BENCH_MODE", "issue")
USER_RPS = float(os.environ.get("KAMI_BENCH_USER_RPS", "0") or 0)
RUN = uuid.uuid4().hex[:8]


class FlashSaleUser(FastHttpUser):
    wait_time = constant_throughput(USER_RPS) if USER_RPS > 0 else constant(0)
    # Saturation: never let one slow answer stall the whole user for long.
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        self.body = f'{{"sku": "{SKU}", "quantity": 1}}'
        self.seq = 0
        self.me = uuid.uuid4().hex[:12]

    @task
    def flash_sale(self) -> None:
        if MODE == "noop":
            with self.client.get("/livez", name="noop", catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(f"{resp.status_code}")
            return
        self.seq += 1
        headers = dict(self.headers)
        headers["Idempotency-Key"] = f"b-{RUN}-{self.me}-{self.seq}"
        with self.client.post(
            "/v1/issuances", data=self.body, headers=headers, name="issue", catch_response=True
        ) as resp:
            if resp.status_code != 201:
                code = ""
                try:
                    code = str(resp.json().get("code") or resp.json().get("detail") or "")
                except Exception:
                    code = ""
                resp.failure(f"{resp.status_code} {code}".strip())
