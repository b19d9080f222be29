"""Domain errors. Each area has a `StrEnum` of stable error codes; `api` maps codes to
HTTP statuses in one place, so a code means the same thing wherever it is raised."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class CommonError(StrEnum):
    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "service_unavailable"


class DomainError(Exception):
    """An expected failure with a stable machine-readable `code`.

    `detail` is shown to the client, so it must never contain secrets or key plaintext.
    `extra` adds members to the problem document (e.g. the fields at fault).
    """

    def __init__(self, code: StrEnum, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.detail!r})"
