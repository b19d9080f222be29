"""Kami's domain logic. The Rust core is re-exported here with an explicit surface."""

from engine._core import (
    CryptoError,
    EngineError,
    HoldNotFound,
    IntegrityError,
    OutOfStock,
    Overloaded,
    Pool,
    PoolUnavailable,
    __version__,
)

__all__ = [
    "CryptoError",
    "EngineError",
    "HoldNotFound",
    "IntegrityError",
    "OutOfStock",
    "Overloaded",
    "Pool",
    "PoolUnavailable",
    "__version__",
]
