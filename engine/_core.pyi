"""Kami's Rust core (`engine._core`)."""

from asyncio import Future
from collections.abc import Sequence
from typing import final

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
    "Pool",
    "PoolUnavailable",
    "__version__",
    "constant_time_eq",
    "distinct_by_fingerprint",
    "fingerprint",
    "fingerprint_many",
    "normalize_code",
    "parse_codes",
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
class Cipher:
    """Envelope encryption of card keys with AES-256-GCM.

    Built from the 32-byte master key. Data keys are created with `generate_data_key`
    (store the returned wrapped key) or loaded with `add_data_key`; new ciphertext uses the
    active one, and every ciphertext names its key id, so old ciphertext still decrypts
    after rotation. A ciphertext is bound to its SKU and entry id: moved to another row it
    fails with `CryptoError`. Safe to share between threads; batch calls release the GIL.

    Ciphertext: version (1 byte, = 1), key id (4 bytes, big-endian), nonce (12 bytes),
    encrypted UTF-8 code, tag (16 bytes): 33 bytes more than the code.
    """

    def __new__(cls, master_key: bytes) -> Cipher:
        """Creates a cipher from the 32-byte master key; ValueError for another length."""

    def generate_data_key(self, key_id: int) -> bytes:
        """Creates, loads and returns (wrapped by the master key, 61 bytes) a random data key.

        The new key is not active: store the wrapped key durably first, then call
        `set_active`. Raises ValueError if `key_id` is already loaded.
        """

    def add_data_key(self, key_id: int, wrapped: bytes, *, active: bool = False) -> None:
        """Unwraps a stored data key and loads it under `key_id` (`active=True` activates it).

        Raises CryptoError if the wrapped key does not open under this master key (or was
        stored under another id), ValueError if a different key is already loaded under
        `key_id`. Loading the same key again is a no-op.
        """

    def set_active(self, key_id: int) -> None:
        """Makes loaded data key `key_id` the one new ciphertext uses; ValueError if unknown."""

    @property
    def active_key_id(self) -> int | None:
        """The id of the data key new ciphertext uses, or None before one is activated."""

    @property
    def key_ids(self) -> list[int]:
        """The ids of the loaded data keys, ascending."""

    @staticmethod
    def key_id_of(ciphertext: bytes) -> int:
        """The data key id in a ciphertext's header; CryptoError if not a known format."""

    def encrypt(self, sku: str, entry_id: int, code: str) -> bytes:
        """Encrypts `code` for entry `entry_id` of `sku`; CryptoError if no key is active."""

    def decrypt(self, sku: str, entry_id: int, ciphertext: bytes) -> str:
        """Decrypts entry `entry_id` of `sku`.

        Raises CryptoError if it does not open: wrong or unloaded key, another SKU or entry,
        or tampered.
        """

    def encrypt_many(self, sku: str, items: Sequence[tuple[int, str]]) -> list[bytes]:
        """Encrypts `(entry_id, code)` pairs of one SKU, in order, without holding the GIL."""

    def decrypt_many(self, sku: str, items: Sequence[tuple[int, bytes]]) -> list[str]:
        """Decrypts `(entry_id, ciphertext)` pairs of one SKU, in order, without the GIL.

        All or nothing: the first entry that does not open raises CryptoError naming its
        entry id.
        """

def fingerprint(key: bytes, code: str) -> bytes:
    """HMAC-SHA256 of `normalize_code(code)` under `key` (at least 32 bytes).

    The key is separate from the encryption keys. The result is the blind index for
    finding duplicate codes without decrypting. Raises ValueError for a short key.
    """

def fingerprint_many(key: bytes, codes: Sequence[str]) -> list[bytes]:
    """`fingerprint` of each code, in order, without holding the GIL."""

def distinct_by_fingerprint(key: bytes, codes: Sequence[str]) -> tuple[list[bytes], list[str], int]:
    """The distinct non-empty codes by fingerprint, in fingerprint order, without the GIL:
    `(fingerprints, codes, duplicates)`, keeping each code's first occurrence and counting
    the later ones."""

def normalize_code(code: str) -> str:
    """Unicode whitespace trimmed at both ends, then Unicode NFC. Nothing else.

    Whitespace is the Unicode White_Space property (unlike `str.strip`, not U+001C..U+001F).
    Codes are case-sensitive and inner whitespace is kept.
    """

def constant_time_eq(a: bytes, b: bytes) -> bool:
    """Compares in time independent of where the inputs differ (MACs, tokens, signatures).

    Lengths are not secret: different lengths return False at once.
    """

@final
class ParseResult:
    """Codes read from a key file, the rows refused and how many rows were skipped.

    Refused rows are reported by number and reason only, never by content: they may be
    real keys. Row numbers are 1-based as an editor or spreadsheet shows them (CSV: records;
    0: the whole file). Reasons: "too_long", "control_characters", "invalid_encoding",
    "empty", "missing_column", "unterminated_quote", "numeric_precision",
    "unsupported_cell", "cell_error", "invalid_file".
    """

    @property
    def codes(self) -> list[str]:
        """The accepted codes, normalised (`normalize_code`), in file order."""

    @property
    def rejected(self) -> list[tuple[int, str]]:
        """`(row, reason)` for every refused row, in file order."""

    @property
    def skipped(self) -> int:
        """Rows skipped on purpose: blank rows and the header."""

def parse_codes(
    data: bytes,
    format: str,
    *,
    column: int | None = None,
    max_length: int = 512,
    skip_header: bool = False,
) -> ParseResult:
    """Parses a whole key file: "txt", "csv" (0-based `column`) or "xlsx" (first sheet).

    Not the old binary `.xls` (its reader cannot bound memory). Text is UTF-8 with or
    without BOM, UTF-16 with BOM, or GBK/GB18030: the first row with a non-ASCII byte
    decides (valid UTF-8 -> UTF-8, otherwise GB18030). Lines end with CRLF, LF or CR. Codes
    are normalised; blank rows are skipped; over-long, control-character and undecodable
    codes are refused with their row number. `skip_header` skips the first row. A damaged
    spreadsheet gives `(0, "invalid_file")`. Raises ValueError only for bad arguments.
    """

@final
class CodeReader:
    """Parses a key file chunk by chunk: `feed` each chunk, then `finish` once.

    Each call returns the rows completed so far (row numbers count from the start of the
    file); together they equal `parse_codes` of the whole file. For "xlsx" the reader
    buffers and `finish` returns everything.
    """

    def __new__(
        cls,
        format: str,
        *,
        column: int | None = None,
        max_length: int = 512,
        skip_header: bool = False,
    ) -> CodeReader:
        """Same arguments as `parse_codes`; ValueError for bad ones."""

    def feed(self, chunk: bytes) -> ParseResult:
        """Parses the next chunk (any size, split anywhere); ValueError after `finish`."""

    def finish(self) -> ParseResult:
        """Ends the input and returns the remaining rows; ValueError if called twice."""

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
    ``issued_ttl_ms`` to twice that (records rotate in two generations), so a retried
    ``take``/``confirm`` returns the same entries.

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
        """Add ``(entry_id, ciphertext, priority)`` entries of ``batch``; returns the new count.

        Lower priority is taken first. Idempotent per entry id: each (priority, batch)
        bucket remembers the highest id it received and skips ids not above it, so load a
        bucket's entries in increasing id order across calls. Ids and priorities < 2**53.
        """
    def load_sorted(
        self,
        sku: str,
        ids: Sequence[int],
        ciphertexts: Sequence[bytes],
        *,
        priority: int,
        batch: int,
    ) -> Future[int]:
        """Add one batch's entries of one ``priority``: ``ids`` strictly increasing, with
        their ``ciphertexts``; returns the new count. The bulk form of ``load``, with the
        same idempotency contract."""
    def park_sorted(
        self,
        sku: str,
        ids: Sequence[int],
        ciphertexts: Sequence[bytes],
        *,
        priority: int,
        batch: int,
        ttl_s: int = 3600,
    ) -> Future[int]:
        """Park one batch's entries of one ``priority`` (``ids`` strictly increasing) where no
        take can see them; returns how many are parked. Then ``activate_parked`` or
        ``unpark``; unclaimed, they vanish after ``ttl_s``."""
    def activate_parked(
        self, sku: str, *, priority: int, batch: int, last_id: int
    ) -> Future[int | None]:
        """Make a batch's parked entries available (``last_id``: its highest entry id);
        returns how many, or None when the pool refused: load the batch the usual way."""
    def unpark(self, sku: str, *, priority: int, batch: int) -> Future[None]:
        """Drop a batch's parked entries (its import did not commit)."""
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
        """Reserve and confirm in one script call (prepaid issuance).

        A retry by the same holder returns the same entries. With ``shards > 1`` the
        holder's shards are tried in an order fixed by its hash; one shard serves a request.
        """
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
    def restore(self, sku: str, holder: str, *, drop: Sequence[int] | None = None) -> Future[int]:
        """Un-issues a take the database never committed: the entries of ``holder``'s issued
        record go back to the pool, except the ids in ``drop`` (issued elsewhere: they leave
        circulation), and the record is forgotten, so a retry by the same holder takes fresh
        entries. Returns how many entries went back."""
    def holders(self, sku: str) -> Future[list[str]]:
        """Holders with a live hold or an issued record in the pool of ``sku``."""
