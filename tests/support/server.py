"""Run `kami serve` as a real process on a free port, as an operator would."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

KAMI = str(Path(sys.executable).with_name("kami"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAMI_", "PROMETHEUS_"))}
    env.update(extra)
    return env


@dataclass
class KamiProcess:
    process: subprocess.Popen[str]
    base_url: str
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"kami serve exited early:\n{self.output}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"kami serve not ready in {timeout}s:\n{self.output}")

    def wait_workers(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` workers have finished starting. Granian leaves a worker running if
        the server is stopped while that worker is still starting, so a test that stops a
        multi-worker server waits for all of them first."""
        deadline = time.monotonic() + timeout
        while self.output.count('"event": "worker_started"') < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} workers not started in {timeout}s:\n{self.output}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # The whole group: a worker left behind would keep serving (and running
                # its background jobs on the session's database) into later tests.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(f"kami serve ignored SIGINT:\n{self.output}") from None
        return self.process.returncode


@contextmanager
def kami_serve(
    *args: str, env: Mapping[str, str], port: int | None = None, ready: bool = True
) -> Iterator[KamiProcess]:
    port = port or free_port()
    process = subprocess.Popen(
        [KAMI, "serve", "--port", str(port), *args],
        env=clean_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group, so a failed test can kill the workers with it.
        start_new_session=True,
    )
    kami = KamiProcess(process, f"http://127.0.0.1:{port}")

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            kami.lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if ready:
            kami.wait_ready()
        yield kami
    finally:
        if process.poll() is None:
            try:
                kami.stop()
            except AssertionError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # The reader ends when every holder of the pipe (workers included) has exited;
        # closing the pipe under a blocked reader would deadlock, so only join.
        reader.join(timeout=10)
        if not reader.is_alive() and process.stdout is not None:
            process.stdout.close()


def run_kami(
    *args: str, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KAMI, *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
