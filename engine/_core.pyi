"""Kami's Rust core (`engine._core`)."""

from asyncio import Future
from collections.abc import Sequence
from typing import final

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

@final
class Pool:
    """Card-key pools in one Redis deployment (a server, or a cluster).

    Nothing connects until the first call, so a server can build its pools before it forks
    workers. Each pool (SKU) holds opaque entries ``(entry_id, ciphertext)`` with a priority
    and a batch; ``reserve``/``confirm``/``release``/``take`` move them between available,
    held and issued atomically, one Lua script call per batch of concurrent callers of the
    same pool shard (coalescing: while a call is in flight, later callers queue, and the next
    call serves up to ``max_batch`` of them; past ``max_queue`` waiting callers,
    ``Overloaded``).

    ``url`` is ``redis://``, ``rediss://``, ``unix:///path`` or ``redis+unix:///path``; with
    ``cluster=True`` it may be a list of seed URLs. ``shards`` splits each pool over that many
    hash tags ``{namespace:pool:SKU:N}`` (cluster slots). ``timeout_ms`` bounds connecting and
    each Redis reply (``PoolUnavailable`` after it). Issued holders are remembered for
    ``issued_ttl_ms`` so a retried ``take``/``confirm`` returns the same entries.

    The I/O methods return an ``asyncio.Future``: call them from a running event loop and
    await the result (wrap in a coroutine for ``asyncio.create_task``).
    """

    def __new__(
        cls,
        url: str | Sequence[str],
        *,
        namespace: str = "kami",
        shards: int = 1,
        max_batch: int = 256,
        max_queue: int = 65536,
        cluster: bool = False,
        timeout_ms: int = 2000,
        issued_ttl_ms: int = 86400000,
    ) -> Pool: ...
    @property
    def namespace(self) -> str:
        """The namespace (key prefix) of this pool client."""
    @property
    def shards(self) -> int:
        """The number of shards each pool is split into."""
    @property
    def clock_ms(self) -> int | None:
        """The "now" of TTLs in ms since the epoch; ``None`` (the default) uses Redis TIME."""
    @clock_ms.setter
    def clock_ms(self, value: int | None) -> None: ...
    def load(
        self, sku: str, entries: Sequence[tuple[int, bytes, int]], *, batch: int = 0
    ) -> Future[int]:
        """Add ``(entry_id, ciphertext, priority)`` entries of ``batch``; returns the new count."""
    def reserve(
        self, sku: str, holder: str, quantity: int, ttl_ms: int, *, batch: int | None = None
    ) -> Future[list[tuple[int, bytes]]]:
        """Hold ``quantity`` entries for ``holder`` for ``ttl_ms``; returns them."""
    def confirm(self, sku: str, holder: str) -> Future[list[int]]:
        """Issue the entries held by ``holder`` for good; returns their ids."""
    def release(self, sku: str, holder: str) -> Future[int]:
        """Return the entries held by ``holder`` to the pool; returns how many."""
    def take(
        self, sku: str, holder: str, quantity: int, *, batch: int | None = None
    ) -> Future[list[tuple[int, bytes]]]:
        """Reserve and confirm in one script call (prepaid issuance)."""
    def take_many(
        self, requests: Sequence[tuple[str, int]], holder: str
    ) -> Future[dict[str, list[tuple[int, bytes]]]]:
        """Take several SKUs ``[(sku, quantity)]`` for one holder, all or nothing."""
    def stock(self, sku: str) -> Future[tuple[int, int, int]]:
        """``(available, held, issued)`` counts of the pool, summed over its shards."""
    def expire(self, sku: str, now_ms: int | None = None) -> Future[int]:
        """Return every hold whose TTL passed to the pool; returns how many holds."""
    def rebuild(
        self, sku: str, entries: Sequence[tuple[int, bytes, int, int]], *, issued: int = 0
    ) -> Future[int]:
        """Replace the pool with ``(entry_id, ciphertext, priority, batch)`` entries."""
    def drain(self, sku: str) -> Future[int]:
        """Delete the pool; returns how many entries were available."""
    def exists(self, sku: str) -> Future[bool]:
        """Whether the pool of ``sku`` is present in Redis."""
    def holders(self, sku: str) -> Future[list[str]]:
        """Holders with a live hold or an issued record in the pool of ``sku``."""
