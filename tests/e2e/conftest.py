"""Real ``bnaas serve`` processes on 127.0.0.1, started and stopped by PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.docker_engine import Engine, docker_engine_fixture
from tests.tools import kill_process, stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One ``bnaas serve`` process; ``url`` is its base address."""

    def __init__(
        self,
        store: str,
        workers: int = 1,
        port: int | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        log_level: str = "warning",
        popen: dict[str, Any] | None = None,
    ):
        self.store, self.workers = store, workers
        self.env = {**os.environ, **(env or {})}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.popen = popen or {}  # extra Popen arguments (e.g. user= to run unprivileged)

    def start(self, timeout: float = 30.0, probe: str = "/readyz") -> Server:
        """Start and wait until ``probe`` answers 200 (``/healthz`` when the store may be down)."""
        cmd = [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--store",
            self.store,
            "--device",
            "cpu",
            "--log-level",
            self.log_level,
        ]
        if self.log is None:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=self.env, **self.popen
            )
        else:
            with open(self.log, "ab") as out:  # the child keeps its own descriptor
                self.proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, **self.popen
                )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}{probe}", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become ready")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what is durable must already be on disk."""
        kill_process(self.proc)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bnaas.db'}"


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path) -> Iterator[Server]:
    s = Server(sqlite_url, log=tmp_path / "server.log").start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A Docker engine with the local base image (tests/e2e/docker_engine.py); started here,
    and stopped at the end, only when none was running."""
    yield from docker_engine_fixture(tmp_path_factory)
