"""V2 protocol in process, with request bytes made by tritonclient's own encoder."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import create, state_of

httpclient = pytest.importorskip("tritonclient.http")
Client = httpclient.InferenceServerClient
X = np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 5.0], [7.0, 9.0, 10.0], [2.0, 0.0, 1.0]], np.float32)


def request(
    x: np.ndarray, binary_in: bool = True, binary_out: bool | None = None, **kw: object
) -> tuple[bytes, dict[str, str]]:
    inp = httpclient.InferInput(
        "INPUT",
        list(x.shape),
        {"float32": "FP32", "float64": "FP64", "float16": "FP16"}[x.dtype.name],
    )
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outputs = (
        None
        if binary_out is None
        else [httpclient.InferRequestedOutput("OUTPUT", binary_data=binary_out)]
    )
    body, json_size = Client.generate_request_body([inp], outputs=outputs, **kw)
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    return body, headers


def infer(client: TestClient, sid: str, body: bytes, headers: dict[str, str]) -> object:
    r = client.post(f"/v2/models/{sid}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = r.headers.get("inference-header-content-length")
    return Client.parse_response_body(r.content, header_length=int(length) if length else None)


def test_server_metadata_and_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata_describes_the_session(client: TestClient) -> None:
    sid = create(client, dtype="float64")
    meta = client.get(f"/v2/models/{sid}").json()
    assert meta["inputs"] == [{"name": "INPUT", "datatype": "FP64", "shape": [-1, 3]}]
    assert meta["outputs"][0]["name"] == "OUTPUT"
    assert client.get(f"/v2/models/{sid}/versions/1").json() == meta
    assert client.get(f"/v2/models/{sid}/ready").status_code == 200
    assert client.get(f"/v2/models/{sid}/versions/2").status_code == 404
    assert client.get("/v2/models/nope/ready").status_code == 404


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False, None])
def test_infer_transform_in_every_binary_json_combination(
    client: TestClient, binary_in: bool, binary_out: bool | None
) -> None:
    sid = create(client)
    stats = state_of(client, sid)
    body, headers = request(X, binary_in, binary_out, request_id="req-7")
    result = infer(client, sid, body, headers)
    y = result.as_numpy("OUTPUT")
    expected = (X - np.array(stats["running_mean"])) / np.sqrt(
        np.array(stats["running_var"]) + 1e-5
    )
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert y.dtype == np.float32
    assert result.get_response()["id"] == "req-7"
    assert state_of(client, sid) == stats


def test_infer_fit_updates_the_session(client: TestClient) -> None:
    sid = create(client)
    body, headers = request(X, parameters={"mode": "fit"})
    result = infer(client, sid, body, headers)
    y = result.as_numpy("OUTPUT")
    x64 = X.astype(np.float64)
    np.testing.assert_allclose(
        y, (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5), rtol=1e-6, atol=1e-6
    )
    assert result.get_response()["parameters"]["num_batches_tracked"] == 1
    assert state_of(client, sid)["num_batches_tracked"] == 1


def test_infer_fit_honours_idempotency_key(client: TestClient) -> None:
    sid = create(client)
    body, headers = request(X, parameters={"mode": "fit"})
    headers["Idempotency-Key"] = "v2-retry"
    a = client.post(f"/v2/models/{sid}/infer", content=body, headers=headers)
    b = client.post(f"/v2/models/{sid}/infer", content=body, headers=headers)
    assert a.content == b.content
    assert state_of(client, sid)["num_batches_tracked"] == 1


def test_fp64_and_fp16_are_answered_in_the_session_dtype(client: TestClient) -> None:
    for dtype in ("float64", "float16"):
        sid = create(client)
        body, headers = request(X.astype(dtype))
        assert infer(client, sid, body, headers).as_numpy("OUTPUT").dtype == np.float32


def test_gzip_request_body(client: TestClient) -> None:
    sid = create(client)
    body, headers = request(X)
    headers["Content-Encoding"] = "gzip"
    infer(client, sid, gzip.compress(body), headers)


def _errors() -> list[tuple[bytes, dict[str, str], str]]:
    good, h = request(X)
    n = int(h["Inference-Header-Content-Length"])
    out: list[tuple[bytes, dict[str, str], str]] = [
        (good[:-4], h, "past the body"),
        (good + b"\0\0\0\0", h, "sizes do not add up"),
        (good, {"Inference-Header-Content-Length": "9999"}, "outside"),
        (good, {"Inference-Header-Content-Length": "x"}, "must be an integer"),
        (good, {}, "Inference-Header-Content-Length"),
        (good[:n].replace(b"FP32", b"INT8") + good[n:], h, "datatype"),
        (good[:n].replace(b'"INPUT"', b'"OTHER"') + good[n:], h, "unknown input"),
        (b'{"inputs": []}', {}, "exactly one input"),
        (b"[1, 2]", {}, "JSON object"),
    ]
    for args, message in (
        ({"sequence_id": 5}, "sequence parameter"),
        ({"parameters": {"mode": "train"}}, "parameters.mode"),
    ):
        body, headers = request(X, **args)
        out.append((body, headers, message))
    body, headers = request(X, binary_out=True)
    n = int(headers["Inference-Header-Content-Length"])
    out.append((body[:n].replace(b'"OUTPUT"', b'"SCORES"') + body[n:], headers, "unknown output"))
    wrong = X[:, :2].copy()
    body, headers = request(wrong)
    out.append((body, headers, "expected 3 features"))
    body, headers = request(np.full((2, 3), np.nan, np.float32))
    out.append((body, headers, "NaN"))
    return out


@pytest.mark.parametrize(("body", "headers", "message"), _errors())
def test_bad_infer_is_400_with_error_member(
    client: TestClient, body: bytes, headers: dict[str, str], message: str
) -> None:
    sid = create(client)
    r = client.post(f"/v2/models/{sid}/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert state_of(client, sid)["num_batches_tracked"] == 0


def test_unknown_model_is_404_with_error_member(client: TestClient) -> None:
    body, headers = request(X)
    r = client.post("/v2/models/nope/infer", content=body, headers=headers)
    assert r.status_code == 404
    assert r.json()["error"] == "session 'nope' not found"
