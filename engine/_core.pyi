"""Kami's Rust core (`engine._core`)."""

__all__ = [
    "CryptoError",
    "EngineError",
    "HoldNotFound",
    "IntegrityError",
    "OutOfStock",
    "Overloaded",
    "PoolUnavailable",
    "__version__",
]

__version__: str

class EngineError(Exception):
    """Base class of every error raised by engine._core."""

class OutOfStock(EngineError):
    """Fewer entries are available than requested; nothing was held."""

class HoldNotFound(EngineError):
    """The holder holds nothing (expired, released or never held)."""

class Overloaded(EngineError):
    """The pool's coalescing queue is full; back off and retry."""

class PoolUnavailable(EngineError):
    """Redis could not be reached; retryable."""

class IntegrityError(EngineError):
    """Pool data is inconsistent; never retried blindly."""

class CryptoError(EngineError):
    """Encryption or decryption failed (wrong key, tampered or moved ciphertext)."""
