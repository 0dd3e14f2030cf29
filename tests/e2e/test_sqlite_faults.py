"""SQLite store faults against real ``bnaas serve`` processes: a full disk, a file made
read-only, damaged pages and records. Every affected request is a 503 problem with
Retry-After (never a 500, never a hang), ``/readyz`` is 503 while the store cannot serve,
``/healthz`` stays 200, and service resumes without a restart once the fault is gone."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.tools import missing

pytestmark = pytest.mark.slow

BATCH = {"data": [[1.0, 2.0], [3.0, 5.0], [0.0, 1.0]]}
TIMEOUT = 30.0  # far above BNAAS_STORE_TIMEOUT_S: a request past it counts as a hang


def create(url: str, c: int = 2) -> httpx.Response:
    return httpx.post(f"{url}/v1/sessions", json={"num_features": c}, timeout=TIMEOUT)


def fit(url: str, sid: str, c: int = 2) -> httpx.Response:
    body = {"data": [[float(i + j) for j in range(c)] for i in range(3)]} if c != 2 else BATCH
    return httpx.post(f"{url}/v1/sessions/{sid}/fit", json=body, timeout=TIMEOUT)


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1


def assert_no_500(responses: list[httpx.Response]) -> list[int]:
    codes = [r.status_code for r in responses]
    assert all(c < 500 or c == 503 for c in codes), codes
    for r in responses:
        if r.status_code == 503:
            assert_unavailable(r)
    return codes


def probes(url: str) -> tuple[int, int]:
    ready = httpx.get(f"{url}/readyz", timeout=TIMEOUT).status_code
    return ready, httpx.get(f"{url}/healthz", timeout=TIMEOUT).status_code


def shared_dir() -> Path:
    """A directory an unprivileged server process can use (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="bnaas-faults-"))
    d.chmod(0o777)
    return d


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    """A 6 MiB tmpfs, so that the disk can be filled for real (needs root)."""
    if os.geteuid() != 0:
        missing("mounting a tmpfs needs root")
    d = shared_dir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0777", "tmpfs", str(d)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        d.rmdir()
        missing(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)
    d.rmdir()


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system is full."""
    with open(path, "wb", buffering=0) as out:
        for size in (65536, 512):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                pass


def test_a_full_disk_answers_503_then_heals_without_restart(tmpfs: Path, tmp_path: Path) -> None:
    server = Server(f"sqlite:///{tmpfs / 'bn.db'}", log=tmp_path / "server.log").start()
    try:
        sid = create(server.url).json()["id"]
        assert fit(server.url, sid).status_code == 200
        fill(tmpfs / "filler")
        # A wide session needs megabytes that are not there; fits may still fit in the WAL.
        answers = [create(server.url, 1 << 16) for _ in range(3)]
        answers += [fit(server.url, sid) for _ in range(5)]
        codes = assert_no_500(answers)
        assert 503 in codes
        assert probes(server.url) == (503, 200)
        (tmpfs / "filler").unlink()
        assert probes(server.url) == (200, 200)
        assert create(server.url, 1 << 16).status_code == 201
        assert all(fit(server.url, sid).status_code == 200 for _ in range(10))
        doc = httpx.get(f"{server.url}/v1/sessions/{sid}", timeout=TIMEOUT).json()
        assert doc["num_batches_tracked"] == 1 + codes[3:].count(200) + 10
    finally:
        server.stop()


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_file_capabilities() -> None:
    # In the child before exec: without these two capabilities root obeys file modes.
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unprivileged() -> dict[str, Any]:
    """Popen arguments under which the server obeys file permissions: root ignores them, so
    as root the server runs without CAP_DAC_OVERRIDE (a read-only file is read-only to it)."""
    return {"preexec_fn": _drop_file_capabilities} if os.geteuid() == 0 else {}


def set_mode(d: Path, files: int, directory: int) -> None:
    for p in d.iterdir():
        p.chmod(files)
    d.chmod(directory)


@pytest.fixture
def ro_dir() -> Iterator[Path]:
    d = shared_dir()
    yield d
    set_mode(d, 0o666, 0o777)
    shutil.rmtree(d)


def test_a_file_made_read_only_while_serving_never_500s_and_heals(
    ro_dir: Path, tmp_path: Path
) -> None:
    server = Server(
        f"sqlite:///{ro_dir / 'bn.db'}", log=tmp_path / "server.log", popen=unprivileged()
    ).start()
    try:
        sid = create(server.url).json()["id"]
        set_mode(ro_dir, 0o444, 0o555)
        answers = [fit(server.url, sid) for _ in range(15)] + [create(server.url) for _ in range(5)]
        assert_no_500(answers)
        assert probes(server.url)[1] == 200
        set_mode(ro_dir, 0o666, 0o777)
        assert [fit(server.url, sid).status_code for _ in range(20)] == [200] * 20
        assert create(server.url).status_code == 201
        assert probes(server.url) == (200, 200)
    finally:
        server.stop()


def test_a_server_started_on_a_read_only_file_is_unready_until_it_is_writable(
    ro_dir: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{ro_dir / 'bn.db'}"
    log = tmp_path / "server.log"
    first = Server(url, log=log, popen=unprivileged()).start()
    sid = create(first.url).json()["id"]
    assert fit(first.url, sid).status_code == 200
    first.stop()
    set_mode(ro_dir, 0o444, 0o555)
    server = Server(url, log=log, popen=unprivileged()).start(probe="/healthz")
    try:
        assert probes(server.url) == (503, 200)
        assert_unavailable(fit(server.url, sid))
        assert_unavailable(create(server.url))
        assert httpx.get(f"{server.url}/v1/sessions/{sid}", timeout=TIMEOUT).status_code in (
            200,
            503,
        )
        set_mode(ro_dir, 0o666, 0o777)
        assert probes(server.url) == (200, 200)  # the connection opened read-only was replaced
        assert [fit(server.url, sid).status_code for _ in range(10)] == [200] * 10
        doc = httpx.get(f"{server.url}/v1/sessions/{sid}", timeout=TIMEOUT).json()
        assert doc["num_batches_tracked"] == 11
    finally:
        server.stop()


def test_damaged_pages_answer_503_never_500_and_heal_when_repaired(
    sqlite_url: str, tmp_path: Path
) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    log = tmp_path / "server.log"
    first = Server(sqlite_url, log=log).start()
    sids = [create(first.url, 64).json()["id"] for _ in range(20)]
    for sid in sids:
        assert fit(first.url, sid, 64).status_code == 200
    first.stop()  # checkpointed: every page is in the main file
    good = path.read_bytes()
    server = Server(sqlite_url, log=log).start()
    try:
        damaged = bytearray(good)
        rng = random.Random(7)
        for page in range(1, len(good) // 4096):
            damaged[page * 4096 : page * 4096 + 4096] = rng.randbytes(4096)
        path.write_bytes(bytes(damaged))
        answers = []
        for sid in sids:
            answers.append(httpx.get(f"{server.url}/v1/sessions/{sid}", timeout=TIMEOUT))
            answers.append(fit(server.url, sid, 64))
        answers.append(httpx.get(f"{server.url}/v1/sessions", timeout=TIMEOUT))
        answers.append(create(server.url))
        codes = assert_no_500(answers)
        assert 503 in codes
        assert probes(server.url)[1] == 200
        path.write_bytes(good)
        codes = [
            httpx.get(f"{server.url}/v1/sessions/{s}", timeout=TIMEOUT).status_code for s in sids
        ]
        assert codes == [200] * len(sids)
        assert probes(server.url) == (200, 200)
    finally:
        server.stop()


def test_a_garbage_state_record_answers_503_not_409(server: Server, sqlite_url: str) -> None:
    sid = create(server.url).json()["id"]
    other = create(server.url).json()["id"]
    db = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
    db.execute("UPDATE sessions SET state = ?, version = 9 WHERE id = ?", (b"garbage", sid))
    db.commit()
    db.close()
    for r in (httpx.get(f"{server.url}/v1/sessions/{sid}", timeout=TIMEOUT), fit(server.url, sid)):
        assert_unavailable(r)
        assert r.json()["type"] == "urn:bnaas:problem:store-corrupt"
    assert fit(server.url, other).status_code == 200
    assert probes(server.url) == (200, 200)
