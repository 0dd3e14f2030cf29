"""Stats formats and the engine's routes over HTTP (in-process): every export imports back,
bad imports are 422 and change nothing, conventions at creation, ONNX model and scikit-learn
exports, fold of transposed weights, merge, and the engine's semantic fixes (issue 7)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.codecs import decode_safetensors, encode_safetensors
from tests.service.conftest import NPY, create, npy

X = np.random.default_rng(0).normal(3, 2, (8, 3)).astype(np.float32)
ST = "application/x-safetensors"


def fitted(client: TestClient, **config: Any) -> str:
    sid = create(client, **config)
    for k in range(2):
        r = client.post(f"/v1/sessions/{sid}/fit", json={"data": (X * (k + 1)).tolist()})
        assert r.status_code == 200, r.text
    return sid


def snapshot(client: TestClient, sid: str) -> Any:
    r = client.get(f"/v1/sessions/{sid}")
    return r.json()["version"], client.get(f"/v1/sessions/{sid}/stats").json()


@pytest.mark.parametrize("convention", ["torch", "keras", "onnx"])
@pytest.mark.parametrize("fmt", ["json", "keras", "onnx", "safetensors"])
def test_every_export_imports_back_over_http(client: TestClient, convention: str, fmt: str) -> None:
    sid = fitted(client, convention=convention)
    before = client.get(f"/v1/sessions/{sid}/stats").json()
    target = create(client)  # a torch session: the import restores the convention too
    if fmt == "safetensors":
        body = client.get(f"/v1/sessions/{sid}/stats?format=safetensors&prefix=bn.").content
        r = client.put(f"/v1/sessions/{target}/stats?prefix=bn.", content=body,
                       headers={"Content-Type": ST})  # fmt: skip
    else:
        doc = client.get(f"/v1/sessions/{sid}/stats?format={fmt}").json()
        r = client.put(f"/v1/sessions/{target}/stats?format={fmt}", json=doc)
    assert r.status_code == 200, r.text
    assert client.get(f"/v1/sessions/{target}/stats").json() == before


def test_keras_defaults_and_momentum_as_given(client: TestClient) -> None:
    r = client.post("/v1/sessions", json={"num_features": 3, "convention": "keras"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    stats = client.get(f"/v1/sessions/{sid}/stats?format=keras").json()
    assert stats["momentum"] == 0.99 and stats["epsilon"] == 1e-3
    r = client.post("/v1/sessions", json={"num_features": 3, "convention": "keras", "momentum": 1})
    assert r.status_code == 422  # keras momentum is the old value's weight, in [0, 1)


@pytest.mark.parametrize(
    ("body", "params"),
    [
        ({"num_batches_tracked": 18446744073709551615}, ""),
        ({"num_batches_tracked": -1}, ""),
        ({"num_batches_tracked": 2.5}, ""),
        ({"eps": -1}, ""),
        ({"running_var": [1, -1, 1]}, ""),
        ({"weight": [1, 2]}, ""),
        ({"population": {"count": [1, 1, 1], "mean": [0, 0, 0]}}, ""),
        ({"momentum": "x"}, "?format=keras"),
        ({"gamma": "x"}, "?format=keras"),
        ([1, 2], ""),
    ],
)
def test_bad_json_imports_are_422_and_change_nothing(
    client: TestClient, body: Any, params: str
) -> None:
    sid = fitted(client)
    before = snapshot(client, sid)
    r = client.put(f"/v1/sessions/{sid}/stats{params}", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert snapshot(client, sid) == before


@pytest.mark.parametrize(
    "count",
    [np.array(1e30, np.float32), np.array(np.nan, np.float32), np.array([1, 2], np.int64)],
)
def test_bad_safetensors_counts_are_422_and_change_nothing(
    client: TestClient, count: np.ndarray
) -> None:
    sid = fitted(client)
    before = snapshot(client, sid)
    tensors, meta = decode_safetensors(
        client.get(f"/v1/sessions/{sid}/stats?format=safetensors").content
    )
    tensors["num_batches_tracked"] = count
    r = client.put(f"/v1/sessions/{sid}/stats", content=encode_safetensors(tensors, meta),
                   headers={"Content-Type": ST})  # fmt: skip
    assert r.status_code == 422, r.text
    assert snapshot(client, sid) == before
    assert client.post(f"/v1/sessions/{sid}/fit", json={"data": X.tolist()}).status_code == 200


def test_a_plain_state_dict_import_says_what_it_assumed(client: TestClient) -> None:
    sid = fitted(client)
    tensors, _ = decode_safetensors(
        client.get(f"/v1/sessions/{sid}/stats?format=safetensors").content
    )
    plain = encode_safetensors(tensors)
    r = client.put(f"/v1/sessions/{sid}/stats", content=plain, headers={"Content-Type": ST})
    assert r.status_code == 200 and r.json()["assumed"] == {"eps": 1e-5, "momentum": 0.1}
    assert "BN-Assumed" in r.headers
    r = client.put(f"/v1/sessions/{sid}/stats?eps=0.001&momentum=0.2", content=plain,
                   headers={"Content-Type": ST})  # fmt: skip
    assert r.status_code == 200 and "assumed" not in r.json()
    assert r.json()["eps"] == 0.001 and r.json()["momentum"] == 0.2


def test_propagate_session_eps_change_and_round_trip(client: TestClient) -> None:
    sid = create(client, nan_policy="propagate")
    x = X.copy()
    x[0, 1] = np.nan
    assert client.post(f"/v1/sessions/{sid}/fit", content=npy(x),
                       headers={"Content-Type": NPY}).status_code == 200  # fmt: skip
    r = client.put(f"/v1/sessions/{sid}/stats", json={"eps": 0.01})
    assert r.status_code == 200, r.text
    doc = client.get(f"/v1/sessions/{sid}/stats").json()
    assert doc["running_mean"][1] is None
    assert client.put(f"/v1/sessions/{sid}/stats", json=doc).status_code == 200
    assert client.get(f"/v1/sessions/{sid}/stats").json() == doc


def test_momentum_null_is_refused_by_keras_and_onnx_naming_the_alternative(
    client: TestClient,
) -> None:
    sid = fitted(client, momentum=None)
    for fmt in ("keras", "onnx"):
        r = client.get(f"/v1/sessions/{sid}/stats?format={fmt}")
        assert r.status_code == 422 and "format=json" in r.json()["detail"]


def test_onnx_model_export_runs_like_transform(client: TestClient) -> None:
    ort = pytest.importorskip("onnxruntime")
    sid = fitted(client, channel_axis=-1)
    x = np.random.default_rng(1).normal(3, 2, (2, 4, 5, 3)).astype(np.float32)
    r = client.get(f"/v1/sessions/{sid}/stats?format=onnx-model&ndim=4")
    assert r.status_code == 200 and r.headers["content-type"] == "application/onnx"
    (y,) = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"]).run(None, {"X": x})
    t = client.post(f"/v1/sessions/{sid}/transform", content=npy(x), headers={"Content-Type": NPY})
    expected = np.load(__import__("io").BytesIO(t.content))
    np.testing.assert_allclose(y, expected, atol=1e-6)
    assert client.get(f"/v1/sessions/{sid}/stats?format=onnx-model&ndim=6").status_code == 422


def test_sklearn_export_is_the_population(client: TestClient) -> None:
    sid = fitted(client)
    doc = client.get(f"/v1/sessions/{sid}/stats?format=sklearn").json()
    data = np.concatenate([X, 2 * X]).astype(np.float64)
    np.testing.assert_allclose(doc["mean_"], data.mean(0), rtol=1e-6)
    np.testing.assert_allclose(doc["var_"], data.var(0), rtol=1e-5)
    assert doc["n_samples_seen_"] == 16


def test_import_schema_has_no_dangling_refs(client: TestClient) -> None:
    spec = client.get("/openapi.json").text
    assert "#/$defs/" not in spec


def test_fold_transposed_over_http(client: TestClient) -> None:
    sid = fitted(client)
    w = np.random.default_rng(2).normal(0, 1, (4, 3, 2, 2))  # ConvTranspose (in, out, kh, kw)
    r = client.post(f"/v1/sessions/{sid}/fold", json={"weight": w.tolist(), "transposed": True})
    assert r.status_code == 200, r.text
    r = client.post(f"/v1/sessions/{sid}/fold", json={"weight": w.tolist()})
    assert r.status_code == 422  # axis 0 is 4, not the 3 output channels


def test_fold_of_json_integers_gives_floats(client: TestClient) -> None:
    # JSON numbers are values, not dtypes: [1, 2, 3] folds to floats (once truncated to ints).
    # Binary integer tensors are refused by the one dtype rule (service/dtypes.py).
    sid = create(client)
    body = {"weight": [[1, 1], [1, 1], [1, 1]], "bias": [1, 2, 3]}
    r = client.post(f"/v1/sessions/{sid}/fold", json=body)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["bias"], np.array([1, 2, 3]) / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_merge_route_half_and_half(client: TestClient) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(3, 2, (50, 3)), rng.normal(-1, 1, (70, 3))
    sid = create(client, dtype="float64")
    client.post(f"/v1/sessions/{sid}/fit?output=false", json={"data": a.tolist()})
    body = {"count": 70, "mean": b.mean(0).tolist(), "var": b.var(0).tolist()}
    key = {"Idempotency-Key": "merge-1"}
    r = client.post(f"/v1/sessions/{sid}/merge", json=body, headers=key)
    assert r.status_code == 200, r.text
    again = client.post(f"/v1/sessions/{sid}/merge", json=body, headers=key)
    assert again.headers.get("Idempotent-Replayed") == "true"
    pop = client.get(f"/v1/sessions/{sid}/stats").json()["population"]
    both = np.concatenate([a, b])
    np.testing.assert_allclose(pop["mean"], both.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pop["var"], both.var(0), rtol=1e-12)
    assert pop["count"] == [120.0] * 3
    other = create(client, dtype="float64")
    r = client.post(f"/v1/sessions/{other}/merge", json={"from_session": sid})
    assert r.status_code == 200 and r.json()["population"]["count"] == [120.0] * 3
    assert client.post(f"/v1/sessions/{sid}/merge", json={"count": -1, "mean": [0] * 3,
                       "m2": [0] * 3}).status_code == 422  # fmt: skip


def test_engine_semantics_of_issue_7(client: TestClient) -> None:
    sid = fitted(client)
    before = snapshot(client, sid)
    body = {"data": X.tolist(), "grad_output": X.tolist()}
    for lr in ("inf", "1e308"):
        r = client.post(f"/v1/sessions/{sid}/backward?lr={lr}", json=body)
        assert r.status_code == 422, r.text
        assert "Tensor shape" not in r.json()["title"]
    assert snapshot(client, sid) == before
    x = X.copy()
    x[0, 0] = np.nan
    r = client.post(f"/v1/sessions/{sid}/backward?mode=eval", content=encode_safetensors(
        {"data": x, "grad_output": X}), headers={"Content-Type": ST})  # fmt: skip
    assert r.status_code == 422 and r.json()["channels"] == [0]
    empty = np.zeros((2, 3, 0), np.float32)
    r = client.post(
        f"/v1/sessions/{sid}/transform", content=npy(empty), headers={"Content-Type": NPY}
    )
    assert r.status_code == 200 and np.load(__import__("io").BytesIO(r.content)).shape == (2, 3, 0)
    r = client.post(f"/v1/sessions/{sid}/fit", content=npy(empty), headers={"Content-Type": NPY})
    assert r.status_code == 422 and r.json()["type"].endswith("batch-too-small")
    r = client.put(f"/v1/sessions/{sid}/stats", json={"running_var": [1, -1, 1]})
    assert r.json()["type"].endswith("value-out-of-range")


def test_onnx_model_without_the_onnx_package_is_a_clear_501(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bncore

    def missing(*_: Any, **__: Any) -> bytes:
        raise bncore.OnnxUnavailable("ONNX model export needs the onnx package")

    monkeypatch.setattr(bncore, "onnx_model", missing)
    sid = create(client)
    r = client.get(f"/v1/sessions/{sid}/stats?format=onnx-model")
    assert r.status_code == 501
    assert "onnx package" in r.json()["detail"] and "safetensors" in r.json()["detail"]


def test_the_largest_count_is_stored_and_read_back(client: TestClient) -> None:
    sid = fitted(client)
    r = client.put(f"/v1/sessions/{sid}/stats", json={"num_batches_tracked": 2**63 - 1})
    assert r.status_code == 200, r.text
    assert client.get(f"/v1/sessions/{sid}").status_code == 200
    assert client.get(f"/v1/sessions/{sid}/stats").json()["num_batches_tracked"] == 2**63 - 1
    r = client.post(f"/v1/sessions/{sid}/fit", json={"data": X.tolist()})
    assert r.status_code == 422  # one more would not fit in int64: refused, nothing stored
    assert client.get(f"/v1/sessions/{sid}/stats?format=safetensors").status_code == 200
