"""Storefront buyers: order one key, pay through the sandbox, look the order up.

Needs a deployment with the sandbox payment provider on (KAMI_SANDBOX=1; always on in the
embedded default) and stock in the SKU. By hand:

    KAMI_BENCH_SKU=DEMO-VIP-MONTH locust -f bench/locust_storefront.py --host http://127.0.0.1:8000

Environment:
    KAMI_BENCH_SKU       the SKU buyers order (default DEMO-VIP-MONTH)
    KAMI_BENCH_STORE     a sub-store slug to order through (optional)
    KAMI_BENCH_USER_RPS  if set, each user is paced to this many orders/s

Each buyer uses its own contact address, so the reservation caps (unpaid orders per
contact) do not throttle the run; the per-IP cap does unless the deployment raises
KAMI_ORDER_MAX_UNPAID_PER_IP for the test. Failures are named by status and problem code.
"""

from __future__ import annotations

import os
import uuid

from locust import FastHttpUser, constant, constant_throughput, task

SKU = os.environ.get("KAMI_BENCH_SKU", "DEMO-VIP-MONTH")
STORE = os.environ.get("KAMI_BENCH_STORE") or None
USER_RPS = float(os.environ.get("KAMI_BENCH_USER_RPS", "0") or 0)


def _failure_name(resp: object) -> str:
    status = getattr(resp, "status_code", 0)
    try:
        code = str(resp.json().get("code") or "")  # type: ignore[attr-defined]
    except Exception:
        code = ""
    return f"{status} {code}".strip()


class StorefrontBuyer(FastHttpUser):
    wait_time = constant_throughput(USER_RPS) if USER_RPS > 0 else constant(0)
    network_timeout = 30.0

    def on_start(self) -> None:
        self.contact = f"load-{uuid.uuid4().hex[:12]}@example.com"

    @task
    def order_pay_look_up(self) -> None:
        body: dict[str, object] = {
            "sku": SKU,
            "quantity": 1,
            "contact": {"email": self.contact},
            "payment_method": "sandbox",
        }
        if STORE:
            body["store"] = STORE
        with self.client.post("/v1/orders", json=body, name="order", catch_response=True) as resp:
            if resp.status_code != 201:
                resp.failure(_failure_name(resp))
                return
            order = resp.json()
        no, token = order["order_no"], order["lookup_token"]
        with self.client.post(
            f"/v1/payments/sandbox/{no}/pay", name="pay", catch_response=True
        ) as resp:
            if resp.status_code != 200 or resp.json().get("result") != "delivered":
                resp.failure(_failure_name(resp))
                return
        with self.client.get(
            f"/v1/orders/{no}?token={token}", name="look up", catch_response=True
        ) as resp:
            if resp.status_code != 200 or len(resp.json().get("keys") or []) != 1:
                resp.failure(_failure_name(resp))
