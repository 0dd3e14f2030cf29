"""fit / transform / backward / fold over HTTP, checked against float64 recomputation."""

from __future__ import annotations

import base64
import gzip
import zlib

import numpy as np
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from tests.service.conftest import NPY, create, from_npy, npy, state_of

X = np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 5.0], [7.0, 9.0, 10.0], [2.0, 0.0, 1.0]])


def train_mode(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def test_fit_json_normalizes_and_updates_running_stats(client: TestClient) -> None:
    sid = create(client)
    r = client.post(f"/v1/sessions/{sid}/fit", json={"data": X.tolist()})
    assert r.status_code == 200
    body = r.json()
    assert body["shape"] == [4, 3]
    assert body["dtype"] == "float32"
    np.testing.assert_allclose(body["data"], train_mode(X), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(body["batch"]["mean"], X.mean(0))
    np.testing.assert_allclose(body["batch"]["var"], X.var(0))
    assert body["num_batches_tracked"] == 1
    assert r.headers["etag"] == '"2"'
    stats = state_of(client, sid)
    np.testing.assert_allclose(stats["running_mean"], 0.1 * X.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["running_var"], 0.9 + 0.1 * X.var(0, ddof=1), rtol=1e-6)


def test_fit_npy_answer_has_the_json_answers_headers_then_the_stats_in_order(
    client: TestClient,
) -> None:
    sid = create(client)
    body, heads = npy(X.astype(np.float32)), {"content-type": NPY, "accept": NPY}
    first = client.post(f"/v1/sessions/{sid}/fit", content=body, headers=heads)
    retried = client.post(
        f"/v1/sessions/{sid}/fit", content=body, headers={**heads, "idempotency-key": "k1"}
    )
    again = client.post(
        f"/v1/sessions/{sid}/fit", content=body, headers={**heads, "idempotency-key": "k1"}
    )
    assert (first.status_code, retried.status_code, again.status_code) == (200, 200, 200)
    stats = ["bn-batch-mean", "bn-batch-var"]
    names = ["etag", "bn-num-batches-tracked", "vary", *stats, "content-length", "content-type"]
    assert [k.decode() for k, _ in first.headers.raw] == names
    replayed = [*names[:5], "idempotent-replayed", *names[5:]]
    assert [k.decode() for k, _ in again.headers.raw] == replayed
    assert again.content == retried.content and first.headers["vary"] == "Accept"
    assert int(first.headers["content-length"]) == len(first.content)


def test_fit_accepts_flat_data_with_shape(client: TestClient) -> None:
    sid = create(client)
    r = client.post(f"/v1/sessions/{sid}/fit", json={"data": X.ravel().tolist(), "shape": [4, 3]})
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["data"], train_mode(X), rtol=1e-6, atol=1e-6)


def test_fit_npy_answers_npy_with_batch_stats_in_headers(client: TestClient) -> None:
    sid = create(client)
    r = client.post(
        f"/v1/sessions/{sid}/fit", content=npy(X.astype(np.float32)), headers={"content-type": NPY}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == NPY
    y = from_npy(r.content)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, train_mode(X), rtol=1e-6, atol=1e-6)
    mean = np.frombuffer(base64.b64decode(r.headers["bn-batch-mean"]), "<f8")
    var = np.frombuffer(base64.b64decode(r.headers["bn-batch-var"]), "<f8")
    np.testing.assert_allclose(mean, X.mean(0))
    np.testing.assert_allclose(var, X.var(0))
    assert r.headers["bn-num-batches-tracked"] == "1"


def test_fit_output_false_returns_only_statistics(client: TestClient) -> None:
    sid = create(client)
    r = client.post(
        f"/v1/sessions/{sid}/fit", params={"output": "false"}, json={"data": X.tolist()}
    )
    assert r.status_code == 200
    assert "data" not in r.json()
    assert r.json()["batch"]["count"] == 4


def test_transform_uses_running_stats_and_changes_nothing(client: TestClient) -> None:
    sid = create(client, dtype="float64")
    client.post(f"/v1/sessions/{sid}/fit", json={"data": X.tolist()})
    before = client.get(f"/v1/sessions/{sid}").json()
    stats = state_of(client, sid)
    r = client.post(f"/v1/sessions/{sid}/transform", json={"data": X.tolist()})
    assert r.status_code == 200
    expected = (X - np.array(stats["running_mean"])) / np.sqrt(
        np.array(stats["running_var"]) + 1e-5
    )
    np.testing.assert_allclose(r.json()["data"], expected, rtol=1e-12)
    assert client.get(f"/v1/sessions/{sid}").json() == before


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (NPY, NPY),
        ("application/json", "application/json"),
        ("*/*", NPY),
        (None, NPY),
        ("text/html;q=0.9, application/json;q=0.5", "application/json"),
    ],
)
def test_transform_answer_follows_accept(
    client: TestClient, accept: str | None, expected: str
) -> None:
    sid = create(client)
    headers = {"content-type": NPY} | ({"accept": accept} if accept else {})
    r = client.post(
        f"/v1/sessions/{sid}/transform", content=npy(X.astype(np.float32)), headers=headers
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == expected


def test_unacceptable_accept_is_406(client: TestClient) -> None:
    sid = create(client)
    r = client.post(
        f"/v1/sessions/{sid}/transform", json={"data": X.tolist()}, headers={"accept": "text/csv"}
    )
    assert r.status_code == 406


def test_gzip_and_deflate_bodies_are_decoded(client: TestClient) -> None:
    sid = create(client)
    raw = npy(X.astype(np.float32))
    for encoding, data in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        r = client.post(
            f"/v1/sessions/{sid}/transform",
            content=data,
            headers={"content-type": NPY, "content-encoding": encoding},
        )
        assert r.status_code == 200, r.text


def test_gzip_bomb_is_413(client: TestClient) -> None:
    sid = create(client)
    bomb = gzip.compress(b"\0" * (4 << 20))  # 4 MiB inflated, limit is 1 MiB
    r = client.post(
        f"/v1/sessions/{sid}/transform",
        content=bomb,
        headers={"content-type": NPY, "content-encoding": "gzip"},
    )
    assert r.status_code == 413


BAD_BODIES = [
    ("application/json", b"{not json", 400, "invalid JSON"),
    ("application/json", b'{"values": [1, 2, 3]}', 400, "data"),
    ("application/json", b'{"data": [[1, 2, 3], [4, 5]]}', 400, "ragged"),
    ("application/json", b'{"data": [["a", "b", "c"]]}', 400, "not a rectangular array"),
    ("application/json", b'{"data": [1, 2, 3, 4], "shape": [2, 3]}', 400, "needs 6"),
    ("application/json", b'{"data": [1, 2, 3], "shape": "3"}', 400, "shape"),
    ("application/json", b'{"data": [[1, 2, 3], [4, 5, 6]], "dtype": "int8"}', 422, "dtype"),
    ("application/json", b'{"data": [[1, 2], [4, 5]]}', 422, "expected 3 features"),
    ("application/json", b'{"data": [1, 2, 3]}', 422, "expected 2D to 5D"),
    ("application/json", b'{"data": [[1, 2, 3]]}', 422, "Expected more than 1 value"),
    ("application/json", b'{"data": [[1, null, 3], [4, 5, 6]]}', 422, "channel(s) 1"),
    ("application/x-npy", b"not an npy file", 400, "bad magic"),
    ("application/x-npy", npy(np.zeros((4, 3), np.float32))[:-4], 400, "header promises"),
    ("application/x-npy", npy(np.zeros((4, 3), np.int32)), 422, "dtype"),
    (
        "application/x-npy",
        b"\x93NUMPY\x01\x00\x10\x00{'descr': 'XX'}  \n",
        400,
        "invalid .npy header",
    ),
    ("text/plain", b"1,2,3", 415, "application/json"),
]


@pytest.mark.parametrize(("ctype", "data", "status", "message"), BAD_BODIES)
def test_bad_fit_input_is_a_clear_problem_and_changes_nothing(
    client: TestClient, ctype: str, data: bytes, status: int, message: str
) -> None:
    sid = create(client)
    before = client.get(f"/v1/sessions/{sid}").json()
    r = client.post(f"/v1/sessions/{sid}/fit", content=data, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert message in r.json()["detail"]
    assert client.get(f"/v1/sessions/{sid}").json() == before


def test_nan_rejection_names_the_channels(client: TestClient) -> None:
    sid = create(client)
    x = X.astype(np.float32)
    x[1, 2] = np.inf
    r = client.post(f"/v1/sessions/{sid}/fit", content=npy(x), headers={"content-type": NPY})
    assert r.status_code == 422
    assert r.json()["channels"] == [2]


def test_propagate_policy_returns_null_for_nan(client: TestClient) -> None:
    sid = create(client, nan_policy="propagate")
    r = client.post(f"/v1/sessions/{sid}/fit", json={"data": [[1, None, 3], [4, 5, 6]]})
    assert r.status_code == 200
    assert r.json()["data"][0][1] is None


def test_body_over_the_limit_is_413_before_reading(client: TestClient) -> None:
    sid = create(client)
    big = npy(np.zeros((100_000, 3), np.float32))  # 1.2 MB > 1 MiB
    r = client.post(f"/v1/sessions/{sid}/fit", content=big, headers={"content-type": NPY})
    assert r.status_code == 413
    assert r.json()["error"].startswith("body of")


def test_streamed_body_over_the_limit_is_413(client: TestClient) -> None:
    sid = create(client)

    def chunks():  # no Content-Length: chunked transfer
        for _ in range(20):
            yield b"\0" * 100_000

    r = client.post(f"/v1/sessions/{sid}/fit", content=chunks(), headers={"content-type": NPY})
    assert r.status_code == 413
    assert client.get(f"/v1/sessions/{sid}").json()["num_batches_tracked"] == 0


def test_fit_retry_with_idempotency_key_is_applied_once(client: TestClient) -> None:
    sid = create(client)
    headers = {"Idempotency-Key": "batch-17"}
    first = client.post(f"/v1/sessions/{sid}/fit", json={"data": X.tolist()}, headers=headers)
    again = client.post(f"/v1/sessions/{sid}/fit", json={"data": X.tolist()}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert client.get(f"/v1/sessions/{sid}").json()["num_batches_tracked"] == 1
    other = client.post(f"/v1/sessions/{sid}/fit", json={"data": (X + 1).tolist()}, headers=headers)
    assert other.status_code == 422
    assert client.get(f"/v1/sessions/{sid}").json()["num_batches_tracked"] == 1


def test_fit_with_stale_if_match_is_412_and_applies_nothing(client: TestClient) -> None:
    sid = create(client)
    ok = client.post(
        f"/v1/sessions/{sid}/fit", json={"data": X.tolist()}, headers={"If-Match": '"1"'}
    )
    assert ok.status_code == 200
    stale = client.post(
        f"/v1/sessions/{sid}/fit", json={"data": X.tolist()}, headers={"If-Match": '"1"'}
    )
    assert stale.status_code == 412
    assert client.get(f"/v1/sessions/{sid}").json()["num_batches_tracked"] == 1


def test_fit_on_unknown_session_is_404(client: TestClient) -> None:
    r = client.post("/v1/sessions/nope/fit", json={"data": X.tolist()})
    assert r.status_code == 404


def test_channels_last_session_normalizes_the_last_axis(client: TestClient) -> None:
    sid = create(client, channel_axis=-1, dtype="float64")
    x = np.random.default_rng(0).normal(2, 3, (2, 4, 5, 3))
    r = client.post(f"/v1/sessions/{sid}/fit", json={"data": x.tolist()})
    y = np.array(r.json()["data"])
    flat = x.reshape(-1, 3)
    np.testing.assert_allclose(y.reshape(-1, 3), train_mode(flat), rtol=1e-9, atol=1e-9)


def test_backward_train_mode_matches_float64_formula(client: TestClient) -> None:
    sid = create(client, dtype="float64")
    rng = np.random.default_rng(1)
    x, g = rng.normal(0, 2, (6, 3)), rng.normal(0, 1, (6, 3))
    r = client.post(
        f"/v1/sessions/{sid}/backward", json={"data": x.tolist(), "grad_output": g.tolist()}
    )
    assert r.status_code == 200
    n = 6
    xhat = train_mode(x)
    invstd = 1 / np.sqrt(x.var(0) + 1e-5)
    dx = invstd / n * (n * g - g.sum(0) - xhat * (g * xhat).sum(0))
    np.testing.assert_allclose(r.json()["grad_input"]["data"], dx, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.json()["grad_weight"], (g * xhat).sum(0), rtol=1e-9)
    np.testing.assert_allclose(r.json()["grad_bias"], g.sum(0), rtol=1e-12)
    assert client.get(f"/v1/sessions/{sid}").json()["version"] == 1


def test_backward_with_lr_steps_weight_and_bias(client: TestClient) -> None:
    sid = create(client, dtype="float64")
    rng = np.random.default_rng(2)
    x, g = rng.normal(0, 2, (6, 3)), rng.normal(0, 1, (6, 3))
    body = safetensors.numpy.save({"data": x, "grad_output": g})
    r = client.post(
        f"/v1/sessions/{sid}/backward",
        params={"lr": 0.1},
        content=body,
        headers={"content-type": "application/x-safetensors"},
    )
    assert r.status_code == 200
    grads = safetensors.numpy.load(r.content)
    stats = state_of(client, sid)
    np.testing.assert_allclose(stats["weight"], 1 - 0.1 * grads["grad_weight"], rtol=1e-12)
    np.testing.assert_allclose(stats["bias"], -0.1 * grads["grad_bias"], rtol=1e-12)


def test_backward_needs_both_tensors(client: TestClient) -> None:
    sid = create(client)
    r = client.post(f"/v1/sessions/{sid}/backward", json={"data": X.tolist()})
    assert r.status_code == 400
    assert "grad_output" in r.json()["detail"]


def test_fold_matches_hand_formula(client: TestClient) -> None:
    sid = create(client, dtype="float64", weight=[1.0, 2.0, 0.5], bias=[0.0, 1.0, -1.0])
    client.post(f"/v1/sessions/{sid}/fit", json={"data": X.tolist()})
    stats = state_of(client, sid)
    w = np.arange(15.0).reshape(3, 5)
    b = np.array([0.5, -0.5, 1.0])
    r = client.post(f"/v1/sessions/{sid}/fold", json={"weight": w.tolist(), "bias": b.tolist()})
    assert r.status_code == 200
    scale = np.array(stats["weight"]) / np.sqrt(np.array(stats["running_var"]) + 1e-5)
    np.testing.assert_allclose(r.json()["weight"]["data"], w * scale[:, None], rtol=1e-12)
    np.testing.assert_allclose(
        r.json()["bias"],
        (b - np.array(stats["running_mean"])) * scale + np.array(stats["bias"]),
        rtol=1e-12,
    )


def test_fold_on_untracked_session_is_409(client: TestClient) -> None:
    sid = create(client, track_running_stats=False)
    r = client.post(f"/v1/sessions/{sid}/fold", json={"weight": [[1.0], [1.0], [1.0]]})
    assert r.status_code == 409


ODD_JSON = [
    b"",
    b"null",
    b"[]",
    b"[[]]",
    b'{"data": []}',
    b'{"data": [[]]}',
    b'{"data": [[1e400, 1, 2]]}',
    b'{"data": [[1e39, 1, 2], [1, 2, 3]]}',
    b'{"data": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"data": [[1, 2, 3]], "shape": [99999999999, 3]}',
    b'{"data": [1, 2, 3, 4, 5, 6], "shape": [2, -3]}',
    b'{"data": {"a": 1}}',
    b'{"data": [[1, 2, 3], [4, 5, 6]], "dtype": 5}',
    b"\xff\xfe",
    b'"str"',
    b'{"data": [0, 0, 0], "shape": [0, 3]}',
    b'{"data": [[1, 2, 3], [4, 5, "6"]]}',
]
ODD_NPY = [
    npy(np.zeros((2, 3, 1, 1, 1, 1), np.float32)),
    npy(np.zeros((3,), np.float32)),
    npy(np.zeros((2, 3), np.complex64)),
    npy(np.zeros((2, 3), "M8[s]")),
    b"\x93NUMPY\x01\x00\xff\xff" + b"x" * 10,
    b"\x93NUMPY\x03\x00\x10\x00{}",
    b"\x93NUMPY",
    b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f4', 'shape': (1e9,)} \n",
]


@pytest.mark.parametrize("route", ["fit", "transform", "backward", "fold"])
def test_odd_bodies_never_cause_a_server_error(client: TestClient, route: str) -> None:
    sid = create(client)
    for ctype, bodies in (("application/json", ODD_JSON), (NPY, ODD_NPY)):
        for body in bodies:
            r = client.post(
                f"/v1/sessions/{sid}/{route}", content=body, headers={"content-type": ctype}
            )
            assert r.status_code < 500, (body[:40], r.text)
            if r.status_code >= 400:
                assert r.headers["content-type"] == "application/problem+json"
    assert client.get(f"/v1/sessions/{sid}").json()["num_batches_tracked"] == 0
