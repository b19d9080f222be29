"""Stable error codes of storefront orders and payments."""

from __future__ import annotations

from enum import StrEnum


class OrderError(StrEnum):
    # A missing order and a wrong lookup token are the same answer: orders can't be probed.
    ORDER_NOT_FOUND = "order_not_found"
    STORE_NOT_FOUND = "store_not_found"
    PAYMENT_METHOD_UNAVAILABLE = "payment_method_unavailable"
    PAYMENT_PROVIDER_UNAVAILABLE = "payment_provider_unavailable"
    RESERVATION_LIMIT = "reservation_limit"
    LOOKUP_RATE_LIMITED = "lookup_rate_limited"
    INVALID_ORDER_STATE = "invalid_order_state"
    PAYMENT_REJECTED = "payment_rejected"
    PAYMENT_MISMATCH = "payment_mismatch"
    REFUND_FAILED = "refund_failed"
    PRICE_BELOW_COST = "price_below_cost"
    STORE_SLUG_TAKEN = "store_slug_taken"
    # Store settings sell for real money: a sandbox (test) key may not change them.
    LIVE_KEY_REQUIRED = "live_key_required"
