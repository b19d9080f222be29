"""Kami's domain logic. The Rust core is re-exported here with an explicit surface."""

from engine._core import (
    Cipher,
    CodeReader,
    CryptoError,
    EngineError,
    HoldNotFound,
    IntegrityError,
    OutOfStock,
    Overloaded,
    ParseResult,
    PoolUnavailable,
    __version__,
    constant_time_eq,
    fingerprint,
    fingerprint_many,
    normalize_code,
    parse_codes,
)

__all__ = [
    "Cipher",
    "CodeReader",
    "CryptoError",
    "EngineError",
    "HoldNotFound",
    "IntegrityError",
    "OutOfStock",
    "Overloaded",
    "ParseResult",
    "PoolUnavailable",
    "__version__",
    "constant_time_eq",
    "fingerprint",
    "fingerprint_many",
    "normalize_code",
    "parse_codes",
]
