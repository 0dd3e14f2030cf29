"""Nothing is read before it is allowed: a gzip bomb without a key costs the server nothing."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow
KEY = "e2e-key"
BOMB = gzip.compress(b"[" + b"0," * (31 << 20) + b"0]", 9)  # 62 MiB of JSON in ~60 KiB


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had (it never goes down)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.fixture
def keyed_server(sqlite_url: str, tmp_path: Path) -> Iterator[Server]:
    s = Server(sqlite_url, log=tmp_path / "server.log", env={"BNAAS_API_KEYS": KEY}).start()
    yield s
    s.stop()


def test_gzip_bomb_without_a_key_is_401_and_never_inflated(keyed_server: Server) -> None:
    assert keyed_server.proc is not None
    pid = keyed_server.proc.pid
    with httpx.Client(base_url=keyed_server.url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        sid = client.post("/v1/sessions", json={"num_features": 2}, headers=auth).json()["id"]
        before = peak_rss_kib(pid)
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        for path in (f"/v1/sessions/{sid}/fit", f"/v1/sessions/{sid}/transform", "/v1/sessions"):
            r = client.post(path, content=BOMB, headers=headers)
            assert r.status_code == 401, r.text
            assert r.headers["content-type"] == "application/problem+json"
        grown = peak_rss_kib(pid) - before
    assert grown < 16 * 1024, f"peak RSS grew by {grown} KiB for refused bodies"
    assert len(BOMB) < 128 * 1024
