"""Stateless replicas on one real ``redis-server``: fits spread over two ``bnaas serve``
processes are each applied exactly once, through a replica crash and a Redis restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import Server
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.redis]

C = 3
ROWS = 4


def batch(t: int, i: int) -> list[list[float]]:
    """A distinct small batch per (thread, fit): multiples of 1/8, exact in float64."""
    rng = np.random.default_rng(1000 * t + i)
    return (rng.integers(-64, 64, (ROWS, C)) / 8.0).tolist()


@pytest.fixture
def redis_always(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of its own that fsyncs the AOF before acknowledging each write."""
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    yield server
    server.kill()


def replica(redis_url: str, tmp_path: Path, name: str, workers: int = 1) -> Server:
    env = {"BNAAS_STORE_TIMEOUT_S": "1"}
    return Server(redis_url, workers=workers, log=tmp_path / f"{name}.log", env=env).start()


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """``target(0..n-1)`` on ``n`` threads; the first failure is raised here."""
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            target(t)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def check_totals(url: str, sid: str, fits: list[tuple[int, int]]) -> None:
    """``num_batches_tracked``, the population count and the pooled mean of exactly these fits."""
    stats = httpx.get(f"{url}/v1/sessions/{sid}/stats", timeout=30).json()
    assert stats["num_batches_tracked"] == len(fits)
    data = np.array([row for t, i in fits for row in batch(t, i)])
    assert stats["population"]["count"] == [len(data)] * C
    np.testing.assert_allclose(stats["population"]["mean"], data.mean(0), rtol=1e-13, atol=1e-15)


def test_two_replicas_apply_each_fit_once_when_one_is_killed_midway(
    redis_url: str, tmp_path: Path
) -> None:
    single = replica(redis_url, tmp_path, "single")
    double = replica(redis_url, tmp_path, "double", workers=2)
    try:
        sid = httpx.post(f"{double.url}/v1/sessions", json={"num_features": C, "dtype": "float64"})
        sid = sid.json()["id"]
        threads, per_thread = 8, 40
        first: dict[str, bytes] = {}  # Idempotency-Key -> the first answer a client received
        lock = threading.Lock()
        killed = threading.Event()
        retried: set[str] = set()

        def fit(c: httpx.Client, url: str, t: int, i: int) -> httpx.Response:
            return c.post(
                f"{url}/v1/sessions/{sid}/fit?output=false",
                json={"data": batch(t, i)},
                headers={"Idempotency-Key": f"t{t}-i{i}"},
            )

        def client(t: int) -> None:
            with httpx.Client(timeout=60) as c:
                for i in range(per_thread):
                    url = (single, double)[(t + i) % 2].url
                    try:
                        r = fit(c, url, t, i)
                    except httpx.TransportError:
                        r = None  # the replica died with this request: unacknowledged
                    for _ in range(20):  # unacknowledged: the same key on the survivor
                        if r is not None and r.status_code < 500:
                            break
                        with lock:
                            retried.add(f"t{t}-i{i}")
                        r = fit(c, double.url, t, i)
                    assert r is not None and r.status_code == 200, r and r.text
                    with lock:
                        first[f"t{t}-i{i}"] = r.content
                        if len(first) == threads * per_thread // 2 and not killed.is_set():
                            killed.set()
                            single.kill()

        run_threads(threads, client)
        assert killed.is_set()
        assert retried  # every fit sent to the dead replica afterwards, at least
        assert len(first) == threads * per_thread
        check_totals(double.url, sid, [(t, i) for t in range(threads) for i in range(per_thread)])
        with httpx.Client(timeout=60) as c:
            for t in range(threads):
                for i in range(per_thread):
                    assert fit(c, double.url, t, i).content == first[f"t{t}-i{i}"]
    finally:
        single.stop()
        double.stop()


def test_redis_restart_mid_load_is_503_then_recovers_without_losing_acknowledged_fits(
    redis_always: RedisServer, tmp_path: Path
) -> None:
    server = replica(redis_always.url, tmp_path, "bnaas")
    try:
        sid = httpx.post(f"{server.url}/v1/sessions", json={"num_features": C, "dtype": "float64"})
        sid = sid.json()["id"]
        threads, per_thread = 4, 30
        acked: set[tuple[int, int]] = set()
        unavailable: list[httpx.Response] = []
        lock = threading.Lock()
        restarted = threading.Event()

        def client(t: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                for i in range(per_thread):
                    while True:  # a 503 is retried with the same key until acknowledged
                        r = c.post(
                            f"/v1/sessions/{sid}/fit?output=false",
                            json={"data": batch(t, i)},
                            headers={"Idempotency-Key": f"t{t}-i{i}"},
                        )
                        assert r.status_code in (200, 503), r.text
                        if r.status_code == 200:
                            with lock:
                                acked.add((t, i))
                            break
                        with lock:
                            unavailable.append(r)
                        restarted.wait(60)

        def outage() -> None:
            try:
                while len(acked) < threads * per_thread // 3:
                    threading.Event().wait(0.01)
                redis_always.kill()  # SIGKILL: only what the AOF fsynced survives
                deadline = time.monotonic() + 60
                while not unavailable and time.monotonic() < deadline:
                    threading.Event().wait(0.01)
                ready = httpx.get(f"{server.url}/readyz", timeout=30)
                assert ready.status_code == 503
                assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
            finally:
                redis_always.start()
                restarted.set()

        run_threads(threads + 1, lambda t: outage() if t == threads else client(t))
        assert restarted.is_set()
        assert unavailable
        for r in unavailable:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["retry-after"]
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
        check_totals(server.url, sid, sorted(acked))
    finally:
        server.stop()
