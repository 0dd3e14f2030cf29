"""A real ``redis-server`` for the tests: a free loopback port, its own data directory, AOF
on and RDB snapshots off, started and stopped by PID. Missing ``redis-server`` skips locally
and fails in CI (``tests.tools.require``)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tools import kill_process, require, stop_process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """One inline command over a raw socket (no client library needed): the first reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall((" ".join(args) + "\r\n").encode())
        return conn.recv(4096).split(b"\r\n", 1)[0]


class RedisServer:
    """One ``redis-server`` process. ``restart()`` reuses the port and the data directory, so
    what the AOF holds comes back."""

    def __init__(self, directory: Path, appendfsync: str = "everysec") -> None:
        self.binary = require("redis-server")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        cmd = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log}")
            try:
                if _command(self.port, "PING") == b"+PONG":  # not -LOADING: the AOF is read
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("redis-server did not answer PING")

    def command(self, *args: str) -> bytes:
        """Send one inline command (``FLUSHALL``, ``CONFIG SET ...``): the first reply line."""
        return _command(self.port, *args)

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits."""
        stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL: what was not yet fsynced is lost, as in a power cut of the process."""
        kill_process(self.proc)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the whole run; tests that need a clean one use ``redis_url``."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server, emptied (functions stay loaded: FLUSHALL keeps libraries)."""
    assert redis_server.command("FLUSHALL") == b"+OK"
    return redis_server.url
