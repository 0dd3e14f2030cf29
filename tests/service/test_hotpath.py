"""The hot routes (service/routes/hot.py): inline below BNAAS_INLINE_MAX_BYTES, thread pool
above it, the same answers as FastAPI's own handler, and an event loop that stays free."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

import bncore
from service.app import create_app
from service.routes import compute, hot, v2
from service.settings import Settings
from service.stores import SQLiteStore
from tests.service.conftest import NPY, create, from_npy, npy, state_of

SMALL = np.arange(12, dtype=np.float32).reshape(4, 3)
BIG = np.random.default_rng(1).normal(size=(4096, 3)).astype(np.float32)  # 48 KiB of data
LIMIT = 16 * 1024  # between the two


def _app(db: Path, inline_max_bytes: int = LIMIT) -> TestClient:
    settings = Settings(store=f"sqlite:///{db}", device="cpu", inline_max_bytes=inline_max_bytes)
    return TestClient(create_app(settings))


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions the hot routes sent to the thread pool."""
    seen: list[str] = []
    real = hot.run_in_threadpool

    async def counting(fn: Callable[..., Any], *args: Any) -> Any:
        seen.append(getattr(fn, "__name__", "?"))
        return await real(fn, *args)

    for module in (hot, compute, v2):
        monkeypatch.setattr(module, "run_in_threadpool", counting)
    return seen


def _infer_body(x: np.ndarray[Any, Any], mode: str = "transform") -> bytes:
    tensor = {"name": "INPUT", "shape": list(x.shape), "datatype": "FP32"}
    return orjson.dumps(
        {"inputs": [{**tensor, "data": x.ravel().tolist()}], "parameters": {"mode": mode}}
    )


@pytest.mark.parametrize("x", [SMALL, BIG], ids=["inline", "offloaded"])
def test_transform_both_ways_equals_fastapi_handler(
    x: np.ndarray[Any, Any], hops: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _app(tmp_path / "bn.db") as c:
        sid = create(c)
        c.post(f"/v1/sessions/{sid}/fit", content=npy(BIG), headers={"content-type": NPY})
        hops.clear()
        fast = c.post(
            f"/v1/sessions/{sid}/transform", content=npy(x), headers={"content-type": NPY}
        )
        fast_v2 = c.post(f"/v2/models/{sid}/infer", content=_infer_body(x))
        assert hops == ([] if x is SMALL else ["<lambda>", "work"])  # transform; infer: one hop
        monkeypatch.setattr(hot, "ENABLED", False)
        slow = c.post(
            f"/v1/sessions/{sid}/transform", content=npy(x), headers={"content-type": NPY}
        )
        slow_v2 = c.post(f"/v2/models/{sid}/infer", content=_infer_body(x))
    assert fast.status_code == slow.status_code == 200, fast.text
    assert fast.content == slow.content and fast.headers["etag"] == slow.headers["etag"]
    assert fast_v2.status_code == slow_v2.status_code == 200, fast_v2.text
    assert fast_v2.content == slow_v2.content


@pytest.mark.parametrize("x", [SMALL, BIG], ids=["inline", "offloaded"])
def test_fit_both_ways_is_durable(x: np.ndarray[Any, Any], hops: list[str], tmp_path: Path) -> None:
    """A fit answered by the hot route is on disk: a new app on the same file reads it."""
    db = tmp_path / "bn.db"
    with _app(db) as c:
        sid = create(c)
        r = c.post(f"/v1/sessions/{sid}/fit", content=npy(x), headers={"content-type": NPY})
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == '"2"' and r.headers["bn-num-batches-tracked"] == "1"
        np.testing.assert_allclose(
            from_npy(r.content), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-4, atol=1e-4
        )
        v = c.post(f"/v2/models/{sid}/infer", content=_infer_body(x, "fit"))
        assert v.status_code == 200, v.text
    # A small fit needs no hop, on /v1 or /v2 (its group commit runs in another thread while
    # the loop awaits it); a large one hops once for the whole.
    assert hops == ([] if x is SMALL else ["work", "work", "_fit"])
    with _app(db) as c:
        stats = state_of(c, sid)
    assert stats["num_batches_tracked"] == 2
    mean = x.mean(0, dtype=np.float64)
    np.testing.assert_allclose(stats["running_mean"], (1 - 0.9**2) * mean, rtol=1e-5, atol=1e-6)


def test_fit_query_that_fastapi_refuses_is_still_refused(tmp_path: Path) -> None:
    with _app(tmp_path / "bn.db") as c:
        sid = create(c)
        bad = c.post(
            f"/v1/sessions/{sid}/fit?output=maybe",
            content=npy(SMALL),
            headers={"content-type": NPY},
        )
        off = c.post(
            f"/v1/sessions/{sid}/fit?output=OFF", content=npy(SMALL), headers={"content-type": NPY}
        )
    assert bad.status_code == 422
    assert off.status_code == 200 and off.headers["content-type"] == "application/json"
    assert "data" not in off.json() and off.json()["num_batches_tracked"] == 1


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    entered, release = threading.Event(), threading.Event()
    yield entered, release
    release.set()


def _loop_answers_while_in_flight(
    c: TestClient, path: str, body: bytes, entered: threading.Event, release: threading.Event
) -> None:
    with ThreadPoolExecutor(1) as pool:
        big = pool.submit(c.post, path, content=body, headers={"content-type": NPY})
        assert entered.wait(30), big.result().text
        health = c.get("/healthz")  # blocks until the loop runs it
        in_flight = not big.done()
        release.set()
        assert big.result().status_code == 200, big.result().text
    assert health.status_code == 200
    assert in_flight, "/healthz only answered after the big request: it blocked the loop"


def test_loop_free_during_a_large_transform(
    gate: tuple[threading.Event, threading.Event], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = gate
    real = bncore.transform

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)  # on the loop, this would hold /healthz behind it
        return real(*args, **kwargs)

    monkeypatch.setattr(bncore, "transform", held)
    with _app(tmp_path / "bn.db") as c:
        sid = create(c)
        _loop_answers_while_in_flight(
            c, f"/v1/sessions/{sid}/transform", npy(BIG), entered, release
        )


def test_loop_free_during_a_small_fit_commit(
    gate: tuple[threading.Event, threading.Event], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small fit is decoded and combined inline, but its commit's transaction (and fsync)
    never holds the loop: the loop awaits it."""
    entered, release = gate
    real = SQLiteStore._run

    def held(self: SQLiteStore, batch: Any) -> None:
        if any(w.woken is not None for w in batch):  # the fit's batch, not the create's
            entered.set()
            release.wait(30)
        real(self, batch)

    monkeypatch.setattr(SQLiteStore, "_run", held)
    with _app(tmp_path / "bn.db") as c:
        sid = create(c)
        _loop_answers_while_in_flight(c, f"/v1/sessions/{sid}/fit", npy(SMALL), entered, release)


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8"])
def test_large_answers_sent_from_the_tensor_equal_fastapi_handler(
    dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above ``SPLIT_BYTES`` the tensor goes out as a second body message, from the output
    array itself: the bytes on the wire are those of the one-body answer."""
    x = np.random.default_rng(2).normal(size=(32768, 3)).astype(dtype)  # 384 or 768 KiB
    assert x.nbytes > hot.SPLIT_BYTES
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "shape": list(x.shape),
                    "datatype": "FP32" if x.dtype.itemsize == 4 else "FP64",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    raw = x.astype(x.dtype.newbyteorder("<")).tobytes()
    v2_headers = {"inference-header-content-length": str(len(head))}
    answers = []
    with _app(tmp_path / "bn.db") as c:
        sid = create(c)
        c.post(f"/v1/sessions/{sid}/fit", content=npy(BIG), headers={"content-type": NPY})
        for enabled in (True, False):
            monkeypatch.setattr(hot, "ENABLED", enabled)
            t = c.post(
                f"/v1/sessions/{sid}/transform", content=npy(x), headers={"content-type": NPY}
            )
            v = c.post(f"/v2/models/{sid}/infer", content=head + raw, headers=v2_headers)
            assert t.status_code == v.status_code == 200, (t.text, v.text)
            assert int(t.headers["content-length"]) == len(t.content)
            assert int(v.headers["content-length"]) == len(v.content)
            answers.append((t.content, v.content))
    assert answers[0] == answers[1]
    y = from_npy(answers[0][0])
    assert y.dtype == np.float32 and y.shape == x.shape  # the session's dtype
    json_end = int(len(answers[0][1]) - y.nbytes)
    np.testing.assert_array_equal(np.frombuffer(answers[0][1], "<f4", offset=json_end), y.ravel())
