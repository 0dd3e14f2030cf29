"""Stats export and import: JSON, safetensors (a torch state_dict), Keras and ONNX names."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy
from fastapi.testclient import TestClient

from tests.service.conftest import create, state_of

X = np.array([[1.0, 2.0, 3.0], [4.0, 6.0, 5.0], [7.0, 9.0, 10.0]])


def fitted(client: TestClient, **config: object) -> str:
    sid = create(client, **config)
    for k in range(3):
        assert (
            client.post(
                f"/v1/sessions/{sid}/fit", json={"data": (X * (k + 1)).tolist()}
            ).status_code
            == 200
        )
    return sid


def test_json_export_has_pytorch_names_eps_momentum_population(client: TestClient) -> None:
    sid = fitted(client)
    stats = state_of(client, sid)
    assert set(stats) == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "eps",
        "momentum",
        "convention",
        "channel_axis",
        "population",
    }
    assert stats["num_batches_tracked"] == 3
    data = np.concatenate([X * k for k in (1, 2, 3)])
    np.testing.assert_allclose(stats["population"]["mean"], data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["population"]["var"], data.var(0), rtol=1e-12)
    assert stats["population"]["count"] == [9, 9, 9]


def test_affine_false_export_has_no_weight_or_bias(client: TestClient) -> None:
    stats = state_of(client, create(client, affine=False))
    assert "weight" not in stats and "bias" not in stats


def test_safetensors_export_is_a_state_dict_with_metadata(client: TestClient) -> None:
    sid = fitted(client)
    r = client.get(f"/v1/sessions/{sid}/stats", headers={"accept": "application/x-safetensors"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-safetensors"
    tensors = safetensors.numpy.load(r.content)
    assert set(tensors) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert tensors["num_batches_tracked"].dtype == np.int64
    assert tensors["num_batches_tracked"].shape == ()
    assert tensors["running_var"].dtype == np.float32


def test_export_then_import_restores_the_same_transform(client: TestClient) -> None:
    src = fitted(client, momentum=None)
    exported = client.get(f"/v1/sessions/{src}/stats").content
    dst = create(client)
    r = client.put(
        f"/v1/sessions/{dst}/stats", content=exported, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert client.get(f"/v1/sessions/{dst}").json()["config"]["momentum"] is None
    probe = {"data": (X - 2).tolist()}
    a = client.post(f"/v1/sessions/{src}/transform", json=probe).json()
    b = client.post(f"/v1/sessions/{dst}/transform", json=probe).json()
    assert a == b
    assert state_of(client, dst) == state_of(client, src)


def test_safetensors_round_trip(client: TestClient) -> None:
    src = fitted(client)
    body = client.get(f"/v1/sessions/{src}/stats", params={"format": "safetensors"}).content
    dst = create(client)
    r = client.put(
        f"/v1/sessions/{dst}/stats",
        content=body,
        headers={"content-type": "application/x-safetensors"},
    )
    assert r.status_code == 200, r.text
    assert state_of(client, dst) == state_of(client, src)


@pytest.mark.parametrize("fmt", ["keras", "onnx"])
def test_keras_and_onnx_conventions_round_trip(client: TestClient, fmt: str) -> None:
    src = fitted(client, momentum=0.01)
    exported = client.get(f"/v1/sessions/{src}/stats", params={"format": fmt}).json()
    assert exported["momentum"] == pytest.approx(0.99)
    dst = create(client)
    r = client.put(f"/v1/sessions/{dst}/stats", params={"format": fmt}, json=exported)
    assert r.status_code == 200, r.text
    assert r.json()["momentum"] == pytest.approx(0.01)
    assert r.json()["running_var"] == state_of(client, src)["running_var"]


@pytest.mark.parametrize(
    ("doc", "status"),
    [
        ({"running_var": [1.0, 1.0]}, 422),
        ({"running_var": [1.0, -1.0, 1.0]}, 422),
        ({"running_mean": ["a", 0, 0]}, 422),
        ({"eps": 0}, 422),
        ({"num_batches_tracked": -1}, 422),
        ({"surprise": 1}, 422),
        ({"population": {"count": [1, 1], "mean": [0, 0], "var": [0, 0]}}, 422),
        ({"population": {"count": [1e308, 1, 1], "mean": [0, 0, 0], "var": [1e308, 0, 0]}}, 422),
        ({"population": {"count": [1, 1, 1], "mean": [0, 0, 0], "var": [0, -1, 0]}}, 422),
        ([1, 2, 3], 422),
    ],
)
def test_bad_import_is_rejected_and_changes_nothing(
    client: TestClient, doc: object, status: int
) -> None:
    sid = fitted(client)
    before = state_of(client, sid)
    r = client.put(f"/v1/sessions/{sid}/stats", json=doc)
    assert r.status_code == status, r.text
    assert state_of(client, sid) == before


def test_import_into_affine_false_session_rejects_weight(client: TestClient) -> None:
    sid = create(client, affine=False)
    r = client.put(f"/v1/sessions/{sid}/stats", json={"weight": [1.0, 1.0, 1.0]})
    assert r.status_code == 422
    assert "weight given" in r.json()["detail"]


def test_import_of_garbage_safetensors_is_400(client: TestClient) -> None:
    sid = create(client)
    r = client.put(
        f"/v1/sessions/{sid}/stats",
        content=b"\x10\0\0\0\0\0\0\0{bad",
        headers={"content-type": "application/x-safetensors"},
    )
    assert r.status_code == 400


def test_safetensors_loads_strictly_into_torch_and_transforms_alike(client: TestClient) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load

    sid = fitted(client)
    module = torch.nn.BatchNorm1d(3)
    module.load_state_dict(
        load(client.get(f"/v1/sessions/{sid}/stats?format=safetensors").content), strict=True
    )
    module.eval()
    x = np.random.default_rng(0).normal(3, 2, (5, 3)).astype(np.float32)
    ours = client.post(f"/v1/sessions/{sid}/transform", json={"data": x.tolist()}).json()["data"]
    np.testing.assert_allclose(
        ours, module(torch.from_numpy(x)).detach().numpy(), rtol=1e-6, atol=1e-6
    )
