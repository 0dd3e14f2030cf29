"""End to end through a real socket: a client session, concurrency, crash safety, torch."""

from __future__ import annotations

import io
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow
NPY = "application/x-npy"


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_client_session_in_json_and_npy(server: Server) -> None:
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=server.url) as c:
        sid = c.post("/v1/sessions", json={"num_features": 4}).json()["id"]
        batches = [rng.normal(5, 2, (64, 4)).astype(np.float32) for _ in range(3)]
        assert (
            c.post(f"/v1/sessions/{sid}/fit", json={"data": batches[0].tolist()}).status_code == 200
        )
        for b in batches[1:]:
            r = c.post(f"/v1/sessions/{sid}/fit", content=npy(b), headers={"content-type": NPY})
            assert r.status_code == 200
            assert r.headers["content-type"] == NPY
        stats = c.get(f"/v1/sessions/{sid}/stats").json()
        assert stats["num_batches_tracked"] == 3
        data = np.concatenate(batches).astype(np.float64)
        np.testing.assert_allclose(stats["population"]["mean"], data.mean(0), rtol=1e-12)
        x = rng.normal(5, 2, (8, 4)).astype(np.float32)
        r = c.post(f"/v1/sessions/{sid}/transform", content=npy(x), headers={"content-type": NPY})
        y = np.load(io.BytesIO(r.content))
        expected = (x - np.array(stats["running_mean"])) / np.sqrt(
            np.array(stats["running_var"]) + 1e-5
        )
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_fits_from_8_threads_against_2_workers_are_each_applied_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    server = Server(sqlite_url, workers=2, log=tmp_path / "server.log").start()
    try:
        sid = httpx.post(f"{server.url}/v1/sessions", json={"num_features": 3}).json()["id"]
        acked = []
        lock = threading.Lock()
        body = npy(np.random.default_rng(1).normal(0, 1, (10, 3)).astype(np.float32))

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                for _ in range(12):
                    r = c.post(
                        f"/v1/sessions/{sid}/fit?output=false",
                        content=body,
                        headers={"content-type": NPY},
                    )
                    if r.status_code == 200:
                        with lock:
                            acked.append(r.json()["num_batches_tracked"])

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        session = httpx.get(f"{server.url}/v1/sessions/{sid}").json()
        assert len(acked) == 96
        assert sorted(acked) == list(range(1, 97))  # each fit saw a distinct, gapless count
        assert session["num_batches_tracked"] == 96
        assert session["population_count"] == 960
    finally:
        server.stop()


def test_clients_that_leave_while_their_fit_awaits_the_group_commit_apply_it_once_or_not(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Small fits are committed on the event loop through the group commit. Clients that
    close their connection right after sending (some before the server reads the body, some
    while the fit waits for its batch's fsync) next to clients that read every answer: each
    fit lands once or not at all, the session stays exact (one body, so any k fits give one
    known state), and nothing is logged as a 500."""
    server = Server(sqlite_url, log=tmp_path / "server.log", log_level="info").start()
    try:
        sid = httpx.post(f"{server.url}/v1/sessions", json={"num_features": 8}).json()["id"]
        x = np.random.default_rng(5).normal(3, 2, (32, 8)).astype(np.float32)
        body = npy(x)
        request = (
            f"POST /v1/sessions/{sid}/fit?output=false HTTP/1.1\r\nHost: t\r\n"
            f"Content-Type: {NPY}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        answered: list[int] = []
        lock = threading.Lock()

        def leaver() -> None:
            for _ in range(40):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(request)  # and gone, without reading

        def reader() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                for _ in range(40):
                    r = c.post(
                        f"/v1/sessions/{sid}/fit?output=false",
                        content=body,
                        headers={"content-type": NPY},
                    )
                    assert r.status_code == 200, r.text
                    with lock:
                        answered.append(r.json()["num_batches_tracked"])

        threads = [threading.Thread(target=f) for f in (leaver, leaver, reader, reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)  # the leavers' last fits finish their commit
        stats = httpx.get(f"{server.url}/v1/sessions/{sid}/stats").json()
        k = stats["num_batches_tracked"]
        assert len(answered) == 80 and len(set(answered)) == 80  # distinct counts: each once
        assert 80 <= k <= 160 and max(answered) <= k
        assert stats["population"]["count"] == [32.0 * k] * 8  # one record, one update per fit
        # k fits of one batch from the defaults (mean 0, var 1, momentum 0.1), by hand:
        # r_k = 0.9**k * r_0 + (1 - 0.9**k) * batch statistic (unbiased variance).
        keep = 0.9**k
        data = x.astype(np.float64)
        np.testing.assert_allclose(stats["running_mean"], (1 - keep) * data.mean(0), rtol=1e-5)
        expected_var = keep + (1 - keep) * data.var(0, ddof=1)
        np.testing.assert_allclose(stats["running_var"], expected_var, rtol=1e-5)
        log = (tmp_path / "server.log").read_text()
        assert "Traceback" not in log and '" 500' not in log
    finally:
        server.stop()


def test_sigkill_mid_stream_loses_no_acknowledged_fit(sqlite_url: str, tmp_path: Path) -> None:
    server = Server(sqlite_url, log=tmp_path / "server.log").start()
    sid = httpx.post(f"{server.url}/v1/sessions", json={"num_features": 8}).json()["id"]
    acked: list[str] = []
    pending: list[tuple[str, bytes]] = []
    stop = threading.Event()
    rng = np.random.default_rng(2)

    def stream() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while not stop.is_set():
                key, body = uuid.uuid4().hex, npy(rng.normal(0, 1, (256, 8)).astype(np.float32))
                pending.append((key, body))
                try:
                    r = c.post(
                        f"/v1/sessions/{sid}/fit",
                        content=body,
                        headers={"content-type": NPY, "Idempotency-Key": key},
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.append(key)

    t = threading.Thread(target=stream)
    t.start()
    while len(acked) < 20:
        threading.Event().wait(0.01)
    server.kill()
    stop.set()
    t.join()
    restarted = Server(sqlite_url, port=server.port, log=tmp_path / "server.log").start()
    try:
        session = httpx.get(f"{restarted.url}/v1/sessions/{sid}").json()
        tracked = session["num_batches_tracked"]
        assert len(acked) <= tracked <= len(pending)
        assert session["population_count"] == 256 * tracked  # not torn: one record, one update
        # The request that was in flight is retried with its key: applied at most once.
        key, body = pending[-1]
        r = httpx.post(
            f"{restarted.url}/v1/sessions/{sid}/fit",
            content=body,
            headers={"content-type": NPY, "Idempotency-Key": key},
        )
        assert r.status_code == 200
        after = httpx.get(f"{restarted.url}/v1/sessions/{sid}").json()["num_batches_tracked"]
        assert after == len(pending)
    finally:
        restarted.stop()


def test_exported_safetensors_loads_into_torch_and_transforms_alike(server: Server) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load

    rng = np.random.default_rng(3)
    with httpx.Client(base_url=server.url) as c:
        sid = c.post("/v1/sessions", json={"num_features": 5, "momentum": None}).json()["id"]
        for _ in range(4):
            c.post(
                f"/v1/sessions/{sid}/fit",
                content=npy(rng.normal(2, 3, (32, 5)).astype(np.float32)),
                headers={"content-type": NPY},
            )
        bn = torch.nn.BatchNorm1d(5, momentum=None)
        bn.load_state_dict(
            load(c.get(f"/v1/sessions/{sid}/stats?format=safetensors").content), strict=True
        )
        bn.eval()
        x = rng.normal(2, 3, (16, 5)).astype(np.float32)
        r = c.post(f"/v1/sessions/{sid}/transform", content=npy(x), headers={"content-type": NPY})
        np.testing.assert_allclose(
            np.load(io.BytesIO(r.content)),
            bn(torch.from_numpy(x)).detach().numpy(),
            rtol=1e-6,
            atol=1e-6,
        )
        assert int(bn.num_batches_tracked) == 4
