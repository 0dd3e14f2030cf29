"""The real tritonclient (sync gevent client and aio client) against a real bnaas process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http")
aioclient = pytest.importorskip("tritonclient.http.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402

X = np.random.default_rng(0).normal(3, 2, (16, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def v2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("v2")
    s = Server(
        f"sqlite:///{tmp / 'bn.db'}", log=tmp / "server.log", env={"BNAAS_MAX_BODY_BYTES": "200000"}
    )
    yield s.start()
    s.stop()


def new_session(server: Server, c: int = 4) -> str:
    return str(httpx.post(f"{server.url}/v1/sessions", json={"num_features": c}).json()["id"])


def stats(server: Server, sid: str) -> dict:
    return dict(httpx.get(f"{server.url}/v1/sessions/{sid}/stats").json())


def make_input(x: np.ndarray, binary: bool) -> object:
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def expected_transform(s: dict, x: np.ndarray) -> np.ndarray:
    return (x - np.array(s["running_mean"])) / np.sqrt(np.array(s["running_var"]) + 1e-5)


def test_sync_client_health_metadata_and_every_infer_combination(v2_server: Server) -> None:
    client = httpclient.InferenceServerClient(v2_server.url.removeprefix("http://"))
    sid = new_session(v2_server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(sid)
    assert not client.is_model_ready("no-such-session")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.get_model_metadata(sid)["inputs"][0]["shape"] == [-1, 4]
    assert client.get_model_metadata(sid, model_version="1")["name"] == sid
    fit = client.infer(sid, [make_input(X, True)], parameters={"mode": "fit"})
    assert fit.get_response()["parameters"]["num_batches_tracked"] == 1
    s = stats(v2_server, sid)
    assert s["num_batches_tracked"] == 1
    for binary_in in (True, False):
        for binary_out in (True, False, None):
            outputs = (
                None
                if binary_out is None
                else [httpclient.InferRequestedOutput("OUTPUT", binary_data=binary_out)]
            )
            r = client.infer(sid, [make_input(X, binary_in)], outputs=outputs, request_id="abc")
            np.testing.assert_allclose(
                r.as_numpy("OUTPUT"), expected_transform(s, X), rtol=1e-5, atol=1e-5
            )
            assert r.get_response()["id"] == "abc"
    r = client.infer(sid, [make_input(X, True)], request_compression_algorithm="gzip")
    np.testing.assert_allclose(r.as_numpy("OUTPUT"), expected_transform(s, X), rtol=1e-5, atol=1e-5)
    assert stats(v2_server, sid)["num_batches_tracked"] == 1
    client.close()


def test_sync_client_errors_are_clean_exceptions(v2_server: Server) -> None:
    client = httpclient.InferenceServerClient(v2_server.url.removeprefix("http://"))
    sid = new_session(v2_server)
    cases = [
        (lambda: client.get_model_metadata("no-such-session"), "404", "not found"),
        (lambda: client.infer("no-such-session", [make_input(X, True)]), "404", "not found"),
        (
            lambda: client.infer(sid, [make_input(X[:, :3].copy(), True)]),
            "400",
            "expected 4 features",
        ),
        (
            lambda: client.infer(sid, [make_input(X, True)], sequence_id=3),
            "400",
            "sequence parameter",
        ),
        (
            lambda: client.infer(
                sid, [make_input(X, True)], outputs=[httpclient.InferRequestedOutput("NOPE")]
            ),
            "400",
            "unknown output",
        ),
        (
            lambda: client.infer(sid, [make_input(np.full((2, 4), np.nan, np.float32), True)]),
            "400",
            "NaN",
        ),
        (
            lambda: client.infer(sid, [make_input(np.zeros((20000, 4), np.float32), True)]),
            "413",
            "exceeds",
        ),
        (lambda: client.get_model_metadata(sid, model_version="7"), "404", "no version"),
    ]
    for call, status, message in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == status, info.value
        assert message in info.value.message()
    assert stats(v2_server, sid)["num_batches_tracked"] == 0
    # A float64 batch into a float32 session is converted (the one dtype rule): not an error.
    wide = httpclient.InferInput("INPUT", [16, 4], "FP64")
    wide.set_data_from_numpy(X.astype(np.float64))
    r = client.infer(sid, [wide], parameters={"mode": "fit"})
    assert r.as_numpy("OUTPUT").dtype == np.float32
    assert stats(v2_server, sid)["num_batches_tracked"] == 1
    client.close()


def test_aio_client_passes_the_same_checks(v2_server: Server) -> None:
    sid = new_session(v2_server)

    async def run() -> None:
        client = aioclient.InferenceServerClient(v2_server.url.removeprefix("http://"))
        try:
            assert await client.is_server_live()
            assert await client.is_server_ready()
            assert await client.is_model_ready(sid)
            meta = await client.get_model_metadata(sid)
            assert meta["outputs"][0]["name"] == "OUTPUT"
            inp = aioclient.InferInput("INPUT", list(X.shape), "FP32")
            inp.set_data_from_numpy(X)
            await client.infer(
                sid, [inp], parameters={"mode": "fit"}, headers={"Idempotency-Key": "aio-1"}
            )
            await client.infer(
                sid, [inp], parameters={"mode": "fit"}, headers={"Idempotency-Key": "aio-1"}
            )
            s = stats(v2_server, sid)
            assert s["num_batches_tracked"] == 1
            for binary in (True, False):
                inp = aioclient.InferInput("INPUT", list(X.shape), "FP32")
                inp.set_data_from_numpy(X, binary_data=binary)
                outs = [aioclient.InferRequestedOutput("OUTPUT", binary_data=binary)]
                r = await client.infer(sid, [inp], outputs=outs)
                np.testing.assert_allclose(
                    r.as_numpy("OUTPUT"), expected_transform(s, X), rtol=1e-5, atol=1e-5
                )
            bad = aioclient.InferInput("INPUT", [16, 3], "FP32")
            bad.set_data_from_numpy(X[:, :3].copy())
            with pytest.raises(InferenceServerException) as info:
                await client.infer(sid, [bad])
            assert info.value.status() == "400"
            assert "expected 4 features" in info.value.message()
        finally:
            await client.close()

    asyncio.run(run())


def test_api_keys_through_a_real_socket(tmp_path: Path) -> None:
    server = Server(
        f"sqlite:///{tmp_path / 'auth.db'}",
        log=tmp_path / "server.log",
        env={"BNAAS_API_KEYS": "s3cret"},
    )
    server.start()
    try:
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{server.url}/v1/sessions", json={"num_features": 4}).status_code == 401
        sid = httpx.post(
            f"{server.url}/v1/sessions", json={"num_features": 4}, headers=auth
        ).json()["id"]
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_ready()
        with pytest.raises(InferenceServerException) as info:
            client.infer(sid, [make_input(X, True)])
        assert info.value.status() == "401"
        r = client.infer(sid, [make_input(X, True)], parameters={"mode": "fit"}, headers=auth)
        assert r.get_response()["parameters"]["num_batches_tracked"] == 1
        client.close()
    finally:
        server.stop()
