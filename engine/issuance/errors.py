"""Error codes of the issuance path."""

from __future__ import annotations

from enum import StrEnum


class IssuanceError(StrEnum):
    OUT_OF_STOCK = "out_of_stock"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    PRODUCT_NOT_VISIBLE = "product_not_visible"
    PRODUCT_UNAVAILABLE = "product_unavailable"
    POOL_UNAVAILABLE = "pool_unavailable"
    DATABASE_UNAVAILABLE = "database_unavailable"
    OVERLOADED = "overloaded"
    INTEGRITY_ALARM = "integrity_alarm"
    ISSUANCE_NOT_FOUND = "issuance_not_found"
    ISSUANCE_ALREADY_REFUNDED = "issuance_already_refunded"
